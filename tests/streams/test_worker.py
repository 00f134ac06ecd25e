"""The worker as a real process: broker -> run_stream -> embedded ClickHouse server and derived topics."""

from __future__ import annotations

import random
import signal
import time
import urllib.request

import pytest

from analytics_platform import event_format
from analytics_platform.devstack import processes
from tests.support.simulate import stream_generate

from .conftest import (
    assert_clickhouse_matches_truth,
    assert_derived_events_match_truth,
    clickhouse_counts,
    wait_for_truth,
    wait_until,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]


def test_two_workers_write_exactly_the_truth_and_publish_derived_events(stream_env):
    """Two processes in one consumer group split the partitions (and rebalance when the second joins)."""
    stream = stream_generate(views=600, users=80, seed=11)
    stream_env.produce(stream.messages)
    metrics_port = processes.free_port()
    worker = stream_env.worker_start(metrics_port=metrics_port)
    second = stream_env.worker_start()
    wait_for_truth(stream_env, stream.truth, timeout=120)
    time.sleep(6)  # one more checkpoint: nothing else may arrive
    client = stream_env.clickhouse()
    assert_clickhouse_matches_truth(client, stream.truth)
    assert_derived_events_match_truth(stream_env, stream.truth)
    dead = stream_env.consume(event_format.EVENTS_DLQ_TOPIC)
    assert len(dead) == stream.truth.poison_messages + stream.truth.poison_events
    assert all(d["reason"] for d in dead)

    # The lag gauge: one series per partition the worker owns, 0 once it has caught up.
    scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    lags = [line for line in scrape.splitlines() if line.startswith("streams_consumer_lag{")]
    assert lags, scrape[:2000]
    assert all(line.endswith(" 0.0") for line in lags), lags

    for process in (worker, second):
        process.send_signal(signal.SIGTERM)  # graceful: commits and exits cleanly
    assert worker.wait(30) == 0
    assert second.wait(30) == 0


@pytest.mark.slow
def test_kill_minus_nine_three_times_changes_no_number(stream_env):
    stream = stream_generate(views=19_000, users=2_000, seed=23)
    events = sum(len(m.events) for m in stream.messages)
    assert events >= 200_000
    stream_env.produce(stream.messages)
    rng = random.Random(5)
    client = stream_env.clickhouse()
    kills = 0
    worker = stream_env.worker_start()
    expected = (len(stream.truth.event_ids), len(stream.truth.views))
    # Three random points in the first 60% of the stream; each kill lands at a random moment of
    # processing (between checkpoints or inside a sink flush) once the restarted worker has got
    # that far. The last one leaves 40% (80k+ events, several seconds of work even on an idle
    # machine) after it, so a fast run cannot finish the stream before the third kill.
    thresholds = sorted(rng.uniform(lo, lo + 0.1) * expected[0] for lo in (0.05, 0.25, 0.45))
    for threshold in thresholds:

        def reached(t: float = threshold) -> bool:
            return clickhouse_counts(client)[0] >= t

        wait_until(reached, timeout=180, interval=0.2, what="progress")
        time.sleep(rng.uniform(0.0, 0.5))
        if clickhouse_counts(client) >= expected:
            break
        worker.kill()
        worker.wait()
        kills += 1
        print(f"kill -9 #{kills} with {clickhouse_counts(client)} of {expected} rows stored")
        worker = stream_env.worker_start()
    assert kills >= 3, "the stream finished before three kills: make it longer"
    wait_for_truth(stream_env, stream.truth, timeout=240)
    time.sleep(6)
    assert_clickhouse_matches_truth(client, stream.truth)
    assert_derived_events_match_truth(stream_env, stream.truth)


@pytest.mark.slow
def test_clickhouse_down_for_thirty_seconds_loses_nothing(stream_env, clickhouse_server):
    stream = stream_generate(views=3_000, users=300, seed=31)
    half = len(stream.messages) // 2
    stream_env.produce(stream.messages[:half])
    stream_env.worker_start()
    client = stream_env.clickhouse()
    wait_until(lambda: clickhouse_counts(client)[0] > 0, timeout=60, interval=0.2, what="first rows")
    client.disconnect()

    argv = clickhouse_server.process.args
    data_dir = argv[argv.index("--data-dir") + 1]
    clickhouse_server.stop()
    stream_env.produce(stream.messages[half:])  # events keep arriving while ClickHouse is down
    time.sleep(30)
    restarted = processes.clickhouse_start(
        data_dir=__import__("pathlib").Path(data_dir), host=clickhouse_server.host, port=clickhouse_server.port
    )
    clickhouse_server.process = restarted.process  # the session fixture stops it at the end

    wait_for_truth(stream_env, stream.truth, timeout=120)
    time.sleep(6)
    client = stream_env.clickhouse()
    assert_clickhouse_matches_truth(client, stream.truth)
    assert_derived_events_match_truth(stream_env, stream.truth)
    log = (stream_env.tmp_path / "worker-0.log").read_text()
    assert "backing off" in log or "Backpressure" in log
