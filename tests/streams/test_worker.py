"""The worker as a real process: broker -> run_stream -> embedded ClickHouse server and derived topics."""

from __future__ import annotations

import random
import signal
import time
import urllib.request

import pytest

from analytics_platform import event_format
from analytics_platform.devstack import processes
from tests.support.simulate import Message, stream_generate

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


def test_a_message_spanning_150_days_does_not_stop_the_worker(stream_env):
    """Issue 14: one request of 150 events on 150 days made every INSERT fail ("Too many partitions
    for single INSERT block") and the worker retried it forever. Now it is written in blocks of at
    most 95 days, and the traffic after it arrives as usual."""
    now = int(time.time() * 1000)
    day = 86_400_000
    spread = Message(
        user_id="wrong-clock",
        received_at=now,
        events=[
            {
                "eventId": f"00000000-0000-4000-8000-{i:012d}",
                "type": "click",
                "userId": "wrong-clock",
                "timestamp": now + i * day,
                "receivedAt": now,
            }
            for i in range(150)  # a clock running ahead: every day of the next five months
        ],
    )
    stream_env.produce([spread])
    stream_env.worker_start()
    client = stream_env.clickhouse()
    wait_until(lambda: clickhouse_counts(client)[0] >= 150, timeout=90, interval=0.5, what="the 150-day request")
    normal = stream_generate(views=40, users=10, seed=7, poison=False)
    stream_env.produce(normal.messages)
    expected = 150 + len(normal.truth.event_ids)
    wait_until(lambda: clickhouse_counts(client)[0] >= expected, timeout=60, interval=0.5, what="the traffic after it")
    time.sleep(6)  # one more checkpoint: nothing else may arrive
    assert client.execute("SELECT count(), uniqExact(event_id), uniqExact(toDate(ts)) FROM events")[0] == (
        expected,
        expected,
        len(
            {(now + i * day) // day for i in range(150)}
            | {e["timestamp"] // day for m in normal.messages for e in m.events}
        ),
    )
    assert (stream_env.tmp_path / "worker-0.log").read_text().count("Too many partitions") == 0


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
        data_dir=__import__("pathlib").Path(data_dir),
        host=clickhouse_server.host,
        port=clickhouse_server.port,
        password=clickhouse_server.password,  # the clients' settings hold the session's password
    )
    clickhouse_server.process = restarted.process  # the session fixture stops it at the end

    wait_for_truth(stream_env, stream.truth, timeout=120)
    time.sleep(6)
    client = stream_env.clickhouse()
    assert_clickhouse_matches_truth(client, stream.truth)
    assert_derived_events_match_truth(stream_env, stream.truth)
    log = (stream_env.tmp_path / "worker-0.log").read_text()
    assert "backing off" in log or "Backpressure" in log
