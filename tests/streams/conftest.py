"""Real processes for the stream tests: the session's broker and ClickHouse server, worker subprocesses.

Each test gets its own topic prefix and consumer group (so offsets start at 0 on fresh topics) and
empty ClickHouse tables (rows are keyed by source partition/offset, so a previous test's rows would
look like already-stored progress).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from django.conf import settings
from django.db import connections

from analytics_platform import event_format, kafka, warehouse
from analytics_platform.clickhouse import client_get
from analytics_platform.devstack import processes
from analytics_platform.schema_registry.testing import RegistryProcess
from streams import processors, topic_schemas
from tests.support.simulate import Message, Truth

STREAM_TABLES = tuple(warehouse.names())  # the raw tables and every rollup


@dataclass
class StreamEnv:
    tmp_path: Path
    prefix: str
    group: str
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def topic(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def produce(self, messages: list[Message], **config: Any) -> None:
        producer = Producer(kafka.client_config(**{"linger.ms": 20, "compression.type": "lz4", **config}))
        topic = self.topic(event_format.EVENTS_TOPIC)
        for message in messages:
            extra = {"partition": message.partition} if message.partition is not None else {}
            while True:
                try:
                    producer.produce(topic, message.value(), message.key(), **extra)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(30) == 0

    def worker_start(self, *, metrics_port: int = 0, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp_path / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115 -- lives with the process
        process = subprocess.Popen(
            [
                sys.executable,
                str(Path(settings.BASE_DIR) / "manage.py"),
                "run_stream",
                "--metrics-port",
                str(metrics_port),
            ],
            env={**os.environ, **self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=settings.BASE_DIR,
        )
        self.workers.append(process)
        return process

    def workers_stop(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def clickhouse(self) -> Any:
        return client_get()

    def consume(self, base: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every message of a topic (read from the beginning by a fresh group), decoded.

        The derived topics' values are decoded as any consumer would: confluent-kafka's
        ``AvroDeserializer`` with the registry's URL, after checking the Confluent framing (magic
        byte 0, the id the registry gave the topic's subject). The dead letters are JSON.
        """
        topic = self.topic(base)
        decode = self._decoder(topic)
        consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": f"check-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,
                }
            )
        )
        consumer.subscribe([topic])
        values: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        idle_since = None
        try:
            while time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    if values and idle_since is None:
                        idle_since = time.monotonic()
                    if idle_since is not None and time.monotonic() - idle_since > 3:
                        break
                    continue
                idle_since = None
                values.append(decode(message.value()))
        finally:
            consumer.close()
        return values

    def _decoder(self, topic: str) -> Callable[[bytes], dict[str, Any]]:
        spec = topic_schemas.DERIVED.get(topic.removeprefix(self.prefix))
        if spec is None:
            return orjson.loads
        client = kafka.schema_registry_client()
        schema_id = client.lookup_schema(spec.subject, spec.schema()).schema_id
        deserializer = AvroDeserializer(client)
        context = SerializationContext(topic, MessageField.VALUE)

        def decode(value: bytes) -> dict[str, Any]:
            assert value[:1] == b"\x00", value[:16]  # Confluent's magic byte
            assert int.from_bytes(value[1:5], "big") == schema_id
            event: dict[str, Any] = deserializer(value, context)
            return avro_event_as_json(event)

        return decode


def avro_event_as_json(event: dict[str, Any]) -> dict[str, Any]:
    """An Avro-decoded derived event in the JSON form the processor made (uuid and timestamp logical types)."""
    return {
        key: str(value)
        if isinstance(value, uuid.UUID)
        else int(value.timestamp() * 1000)
        if isinstance(value, datetime)
        else value
        for key, value in event.items()
    }


def wait_until(predicate: Callable[[], bool], *, timeout: float, interval: float = 1.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")


@pytest.fixture
def stream_env(
    kafka_broker: processes.ManagedProcess,
    clickhouse_server: processes.ManagedProcess,
    schema_registry: RegistryProcess,
    tmp_path: Path,
    settings: Any,
) -> Iterator[StreamEnv]:
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    settings.KAFKA_TOPIC_PREFIX = prefix
    kafka.topics_ensure()
    topic_schemas.schemas_register()  # what the dev stack and the deploy do before the worker starts
    ch = connections["clickhouse"].settings_dict
    client = client_get()
    for table in STREAM_TABLES:
        client.execute(f"TRUNCATE TABLE {table}")
    client.disconnect()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.address,
        "KAFKA_TOPIC_PREFIX": prefix,
        "SCHEMA_REGISTRY_URL": schema_registry.url,
        "CLICKHOUSE_HOST": str(ch["HOST"]),
        "CLICKHOUSE_PORT": str(ch["PORT"]),
        "CLICKHOUSE_DATABASE": str(ch["NAME"]),
        "CLICKHOUSE_PASSWORD": str(ch["PASSWORD"]),
        "ANALYTICS_VAR_DIR": str(tmp_path / "var"),
        # Workers started together would race to create var/secret_key (settings.local_secret).
        "DJANGO_SECRET_KEY": "streams-tests-not-secret",
        "STREAMS_CONSUMER_GROUP": f"streams-{prefix}",
        "STREAMS_SINK_RETRY_SECONDS": "2",
        # Generated streams are hours in the past and produced in bursts while a worker runs: a
        # wall-clock tick between bursts would rightly make the rest late. Tests of ticks turn them on.
        "STREAMS_IDLE_TICK_SECONDS": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    stream = StreamEnv(tmp_path=tmp_path, prefix=prefix, group=env["STREAMS_CONSUMER_GROUP"], env=env)
    yield stream
    stream.workers_stop()


def clickhouse_counts(client: Any) -> tuple[int, int]:
    (events,) = client.execute("SELECT count() FROM events")[0]
    (views,) = client.execute("SELECT count() FROM view_summaries")[0]
    return int(events), int(views)


def wait_for_truth(stream: StreamEnv, truth: Truth, *, timeout: float) -> None:
    client = stream.clickhouse()
    expected = (len(truth.event_ids), len(truth.views))
    wait_until(lambda: clickhouse_counts(client) >= expected, timeout=timeout, what=f"{expected} rows")
    client.disconnect()


VIEW_FIGURES = (
    "seek_count",
    "seek_latency_ms",
    "start_ts",
    "end_ts",
    "has_view_start",
    "started",
    "startup_time_ms",
    "watch_time_ms",
    "rebuffer_count",
    "rebuffer_duration_ms",
    "error_count",
    "fatal_error_count",
    "start_failure",
    "playback_failure",
    "exit_before_start",
    "close_reason",
    "event_count",
    "user_id",
    "video_id",
    "country",
    "device",
    "os",
    "browser",
    "cdn",
    "player",
)


def assert_clickhouse_matches_truth(client: Any, truth: Truth) -> None:
    """Every row, summary and rollup equals the truth: nothing lost, nothing counted twice."""
    rows = client.execute("SELECT toString(event_id), late FROM events")
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events stored twice"
    assert set(ids) == truth.event_ids, (
        f"missing {len(truth.event_ids - set(ids))}, unexpected {len(set(ids) - truth.event_ids)}"
    )
    assert {r[0] for r in rows if r[1]} == truth.late_ids

    for table in (warehouse.METRICS_EVENT_TYPE_MINUTE, warehouse.METRICS_EVENT_TYPE_HOUR, warehouse.EVENT_VIDEO_HOUR):
        sums = client.execute(f"SELECT sum(events), sumIf(events, type = 'error'), sum(late_events) FROM {table}")[0]
        assert tuple(sums) == (len(truth.event_ids), truth.error_events, len(truth.late_ids)), table

    columns = ", ".join(("session_id", *VIEW_FIGURES))
    summaries = client.execute(
        f"SELECT {columns}, toUnixTimestamp64Milli(start_ts), toUnixTimestamp64Milli(end_ts) FROM view_summaries"
    )
    sessions = [r[0] for r in summaries]
    assert len(sessions) == len(set(sessions)), "a view was summarised twice"
    assert set(sessions) == set(truth.views)
    mismatches = []
    for row in summaries:
        got = dict(zip(VIEW_FIGURES, row[1:], strict=False))
        got["start_ts"], got["end_ts"] = row[-2], row[-1]
        expected = {k: truth.views[row[0]][k] for k in VIEW_FIGURES}
        if got != expected:
            mismatches.append((row[0], got, expected))
    assert not mismatches, mismatches[:3]

    # Concurrent viewers: each view's watching minutes, each stored exactly once.
    minutes = client.execute("SELECT session_id, toUnixTimestamp64Milli(minute_ts) FROM view_minutes")
    assert len(minutes) == len(set(minutes)), f"{len(minutes) - len(set(minutes))} view minutes stored twice"
    assert sorted(minutes) == sorted((s, m) for s, v in truth.views.items() for m in v["minutes"])

    views = truth.views.values()
    expected_sums = (
        sum(v["has_view_start"] for v in views),
        sum(v["watch_time_ms"] for v in views),
        sum(v["rebuffer_duration_ms"] for v in views),
        sum(v["start_failure"] for v in views),
        sum(v["playback_failure"] for v in views),
        sum(v["exit_before_start"] for v in views),
        sum(v["startup_time_ms"] for v in views if v["started"]),
    )
    for table in (
        warehouse.METRICS_VIEW_MINUTE,
        warehouse.METRICS_VIEW_HOUR,
        warehouse.VIEW_ROLLUP_HOUR,
        warehouse.METRICS_VIEW_VIDEO_DAY,
    ):
        got_sums = client.execute(
            "SELECT sum(views), sum(watch_time_ms), sum(rebuffer_duration_ms), sum(start_failures),"
            f" sum(playback_failures), sum(exits_before_start), sum(startup_time_ms_sum) FROM {table}"
        )[0]
        assert tuple(got_sums) == expected_sums, table


def derived_events_read(stream: StreamEnv, bases: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """The derived topics as a separate consumer process reads them: the documented example
    (examples/consume_derived_events.py: AvroDeserializer with the registry URL, dedup by id).

    One topic after the other: two consumer processes joining their groups at the same moment on
    Tansu 0.6.0 lost messages (one read 113 of 132, a partition stopping after 5), every time.
    """
    script = Path(settings.BASE_DIR) / "examples" / "consume_derived_events.py"
    lines: dict[str, list[dict[str, Any]]] = {}
    for base in bases:
        command = [sys.executable, str(script), "--bootstrap-servers", settings.KAFKA_BOOTSTRAP_SERVERS]
        command += ["--registry-url", stream.env["SCHEMA_REGISTRY_URL"], "--topic", stream.topic(base)]
        result = subprocess.run([*command, "--exit-when-idle", "4"], capture_output=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        lines[base] = [orjson.loads(line) for line in result.stdout.splitlines()]
    return lines


def assert_derived_events_match_truth(stream: StreamEnv, truth: Truth) -> None:
    """Read by a separate process through the registry: exactly the expected ids, Avro with the registered
    schema ids, keyed by userId (API.md)."""
    read = derived_events_read(stream, (event_format.VIDEO_WATCHED_TOPIC, event_format.VIDEO_ERROR_TOPIC))
    client = kafka.schema_registry_client()
    for base, lines in read.items():
        spec = topic_schemas.DERIVED[base]
        registered = client.lookup_schema(spec.subject, spec.schema()).schema_id
        assert {line["schemaId"] for line in lines} <= {registered}, base
        assert all(line["key"] == line["event"]["userId"] for line in lines), base
    watched = [line["event"] for line in read[event_format.VIDEO_WATCHED_TOPIC]]
    expected_watched = {str(processors.video_watched_id(s)) for s in truth.views}
    assert len(watched) == len(expected_watched)
    assert {w["id"] for w in watched} == expected_watched
    by_id = {w["id"]: w for w in watched}
    for session, expected in truth.views.items():
        event = by_id[str(processors.video_watched_id(session))]
        assert event["watchTimeMs"] == expected["watch_time_ms"]
        assert event["failed"] == expected["playback_failure"]
        assert event["startTime"] == expected["start_ts"]
    errors = [line["event"] for line in read[event_format.VIDEO_ERROR_TOPIC]]
    assert {e["eventId"] for e in errors} == truth.fatal_error_ids
    assert {e["id"] for e in errors} == {str(processors.video_error_id(uuid.UUID(i))) for i in truth.fatal_error_ids}


def web_start(stream_env: StreamEnv, tmp_path: Path, *, threads: int = 2) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with this repository's configuration, posting into the test's broker."""
    port = processes.free_port()
    web_env = {
        **os.environ,
        **stream_env.env,
        "PYTHONPATH": str(settings.BASE_DIR),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "INGEST_ALLOWLIST_ENABLED": "false",
        "INGEST_RATE_LIMIT_REQUESTS": "0",
        "INGEST_PRODUCER_LINGER_MS": "5",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": str(threads),
    }
    (tmp_path / "prom").mkdir()
    web_env.pop("DATABASE_URL", None)
    web = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
        ],
        env=web_env,
        cwd=settings.BASE_DIR,
        stdout=open(tmp_path / "web.log", "wb"),  # noqa: SIM115 -- lives with the process
        stderr=subprocess.STDOUT,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=web)
    except BaseException:
        web.kill()
        raise
    return web, port
