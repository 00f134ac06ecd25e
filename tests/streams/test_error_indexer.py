"""The player-error indexer through real processes: broker, registry, run_stream, index_errors, osmem.

A VideoError and a dead letter produced by a real run of the stream worker end up in the index,
once each even when the topics are read again; with Elasticsearch down, the indexer retries while
the stream worker goes on writing ClickHouse, and catches up when Elasticsearch comes back.
"""

from __future__ import annotations

import signal
import uuid

import pytest
from confluent_kafka import Producer

from analytics_platform import kafka
from analytics_platform.devstack.processes import free_port
from tests.logs.osmem import osmem_start
from tests.streams.conftest import wait_until
from tests.streams.errors_support import error_run, indexed, indexer_start, log_text, osmem  # noqa: F401

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.elasticsearch,
    pytest.mark.slow,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]


def _prefix() -> str:
    return f"pe-{uuid.uuid4().hex[:10]}"


def test_a_real_run_indexes_its_video_error_and_dead_letter_once(stream_env, osmem):  # noqa: F811
    run = error_run()
    prefix = _prefix()
    # Poison on the indexer's own topics, before the run: skipped and counted, never a stop.
    producer = Producer(kafka.client_config())
    for value in (b"not avro", b"\x00\x00\x0f\x42\x40garbage", b"\x00"):  # no magic byte; an id never given; cut
        producer.produce(stream_env.topic("video-error"), value, b"poison")
    for value in (b"{not json", b'{"type": "VideoWatched"}', b"[]"):
        producer.produce(stream_env.topic("events-dlq"), value, b"poison")
    assert producer.flush(10) == 0
    stream_env.worker_start()
    indexer = indexer_start(stream_env, url=osmem.url, prefix=prefix)
    stream_env.produce(run.messages)
    wait_until(lambda: len(indexed(osmem, prefix)) >= 2, timeout=90, what="2 documents indexed")
    wait_until(lambda: '"undecodable": 6' in log_text(stream_env), timeout=30, what="6 poison messages counted")

    found = indexed(osmem, prefix)
    docs = {d["kind"]: d for d in found}
    assert set(docs) == {"video_error", "dead_letter"}, [(d["code"], d["message"]) for d in found]
    error = docs["video_error"]
    assert error["event_id"] == run.fatal_event_id
    assert (error["message"], error["code"], error["video_id"]) == (run.message, run.code, run.video_id)
    assert (error["country"], error["device"]) == (run.country, run.device)
    assert error["source"].startswith(stream_env.topic("video-error") + "/")
    dead = docs["dead_letter"]
    assert (dead["code"], dead["event_id"], dead["field"]) == ("invalid_event", run.bad_event_id, "timestamp")

    # Read everything again (a new indexer, a new group, from the earliest offsets): overwrites, no copies.
    indexer.send_signal(signal.SIGTERM)
    assert indexer.wait(30) == 0
    indexer_start(
        stream_env, url=osmem.url, prefix=prefix, name="again", ELASTICSEARCH_ERRORS_CONSUMER_GROUP=f"again-{prefix}"
    )
    wait_until(lambda: "error_indexer_batch" in log_text(stream_env, "again"), timeout=60, what="the topics read again")
    assert sorted(d["_id"] for d in indexed(osmem, prefix)) == sorted([error["_id"], dead["_id"]])


def test_elasticsearch_down_the_indexer_retries_and_the_worker_goes_on(stream_env):
    run = error_run()
    prefix = _prefix()
    port = free_port()
    stream_env.worker_start()
    indexer = indexer_start(
        stream_env,
        url=f"http://127.0.0.1:{port}",
        prefix=prefix,
        ELASTICSEARCH_ERRORS_RETRIES="30",
        ELASTICSEARCH_ERRORS_RETRY_MAX_SECONDS="2",
    )
    stream_env.produce(run.messages)
    client = stream_env.clickhouse()
    # The stream worker is unaffected: the view's events are in ClickHouse while nothing listens on the port.
    wait_until(
        lambda: client.execute("SELECT count() FROM events WHERE video_id = %(v)s", {"v": run.video_id})[0][0] == 2,
        timeout=60,
        what="the run's 2 valid events in ClickHouse",
    )
    wait_until(lambda: log_text(stream_env).count("error_indexer_retry") >= 2, timeout=60, what="2 retries logged")
    assert indexer.poll() is None, log_text(stream_env)[-2000:]

    server = osmem_start(port=port)  # Elasticsearch comes back
    try:
        wait_until(lambda: len(indexed(server, prefix)) >= 2, timeout=60, what="the backlog indexed")
        assert {d["event_id"] for d in indexed(server, prefix)} == {run.fatal_event_id, run.bad_event_id}
    finally:
        stream_env.workers_stop()
        server.stop()
    client.disconnect()


def test_the_indexer_gives_up_after_its_retries_and_exits_1(stream_env):
    prefix = _prefix()
    stream_env.worker_start()
    indexer = indexer_start(
        stream_env,
        url=f"http://127.0.0.1:{free_port()}",
        prefix=prefix,
        ELASTICSEARCH_ERRORS_RETRIES="2",
        ELASTICSEARCH_ERRORS_RETRY_MAX_SECONDS="1",
    )
    stream_env.produce(error_run().messages)
    assert indexer.wait(90) == 1
    text = log_text(stream_env)
    assert text.count("error_indexer_retry") == 2 and "error_indexer_giving_up" in text
