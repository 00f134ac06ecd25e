"""One event's trace through real processes: gunicorn -> broker -> run_stream -> ClickHouse, spans to a real receiver.

The receiver is ``manage.py otlp_receiver`` (OTLP/HTTP, protobuf decoded with opentelemetry-proto)
in a process of its own; the web and worker processes export to it with the SDK's OTLP/HTTP
exporter. What the spans must show: the request's server span; the ``send`` span of the Kafka
message that carried the event, linked to it; the worker's ``process`` span, a child of the send
span through the message's ``traceparent`` header; the sink's INSERT, linked to the process span;
and for a GET /metrics, one span per ClickHouse query, in the request's trace.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.conf import settings

from analytics_platform.trace_store import SpanStore, StoredSpan

from .conftest import StreamEnv, wait_until, web_start

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.slow,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]

# A trace id an attacker picks: the service must not continue it.
HOSTILE_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def _manage(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args], env=env, cwd=settings.BASE_DIR, **kwargs
    )


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[SpanStore, int]]:
    store_path = tmp_path / "traces.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"ANALYTICS_VAR_DIR": str(tmp_path / "receiver-var"), "DJANGO_SECRET_KEY": "receiver-not-secret"})
    process = _manage("otlp_receiver", "--port", "0", "--store", str(store_path), env=env, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert "listening on 127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        store = SpanStore(store_path)
        yield store, port
        store.close()
    finally:
        process.terminate()
        process.wait(10)


def _wait_span(store: SpanStore, predicate: Callable[[StoredSpan], bool], what: str, timeout: float = 60) -> StoredSpan:
    found: list[StoredSpan] = []

    def look() -> bool:
        found[:] = [span for span in store.spans() if predicate(span)]
        return bool(found)

    wait_until(look, timeout=timeout, interval=0.5, what=what)
    return found[0]


def _links_to(span: StoredSpan, target: StoredSpan) -> bool:
    return any(link["trace_id"] == target.trace_id and link["span_id"] == target.span_id for link in span.links)


def _tracing_env(stream_env: StreamEnv, port: int) -> None:
    stream_env.env.update(
        {
            "OTEL_TRACING_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
            "OTEL_TRACES_SAMPLER_RATIO": "1.0",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's batch processor: export within 0.2 s
        }
    )


def test_one_post_is_traced_from_the_request_to_the_clickhouse_insert(
    stream_env: StreamEnv, receiver: tuple[SpanStore, int], tmp_path: Path
) -> None:
    store, port = receiver
    _tracing_env(stream_env, port)
    web, web_port = web_start(stream_env, tmp_path)
    try:
        stream_env.worker_start(LOG_LEVEL="INFO")
        event_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        event = {
            "eventId": event_id,
            "type": "play",
            "userId": "u-trace",
            "sessionId": "s-trace",
            "videoId": "v-trace",
            "timestamp": now.isoformat().replace("+00:00", "Z"),
        }
        conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
        conn.request(
            "POST",
            "/events",
            body=orjson.dumps({"events": [event]}),
            headers={
                "Content-Type": "application/json",
                # A client's chosen (and sampled) trace: ignored, the request starts a trace of its own.
                "traceparent": f"00-{HOSTILE_TRACE_ID}-b7ad6b7169203331-01",
            },
        )
        response = conn.getresponse()
        assert response.status == 202, response.read()
        response.read()
        conn.close()

        server = _wait_span(store, lambda s: s.kind == "server" and "events" in s.name, "the POST's server span")
        assert server.service == "analytics-web"
        assert server.parent_span_id == ""  # a root: the client's traceparent was not continued
        assert server.trace_id != HOSTILE_TRACE_ID

        send = _wait_span(store, lambda s: s.kind == "producer" and _links_to(s, server), "the send span")
        assert send.service == "analytics-web"
        assert send.trace_id != server.trace_id  # a message of several requests: a trace of its own
        assert send.attributes["messaging.system"] == "kafka"
        assert send.attributes["messaging.destination.name"] == stream_env.topic("events")

        process = _wait_span(
            store, lambda s: s.kind == "consumer" and s.parent_span_id == send.span_id, "the worker's process span"
        )
        assert process.service == "analytics-stream-worker"
        assert process.trace_id == send.trace_id  # continued through the message's traceparent header

        write = _wait_span(
            store,
            lambda s: s.name == "clickhouse write events" and _links_to(s, process),
            "the sink's write of the events table",
        )
        insert = _wait_span(
            store, lambda s: s.name == "INSERT events" and s.parent_span_id == write.span_id, "the INSERT span"
        )
        assert insert.service == "analytics-stream-worker"
        assert insert.kind == "client"
        assert insert.attributes["db.system.name"] == "clickhouse"
        query = insert.attributes["db.query.text"]
        assert query.startswith("INSERT INTO events (") and query.endswith("FORMAT JSONCompactColumns")
        assert event_id not in query  # the statement's shape, never the rows
        assert insert.attributes["analytics.rows"] >= 1

        # A log line written inside a span carries its ids (what logs_search --trace-id looks up).
        raw = (tmp_path / "worker-0.log").read_bytes().splitlines()
        lines = [orjson.loads(line) for line in raw if line[:1] == b"{"]
        progress = [line for line in lines if line.get("event") == "clickhouse progress read"]
        assert progress, lines[-5:]
        assert {(line.get("trace_id"), line.get("span_id")) for line in progress} >= {(write.trace_id, write.span_id)}

        # Nothing at all was recorded in the client's trace.
        assert store.spans(HOSTILE_TRACE_ID) == []
        # traces_show follows the links from the request to the insert.
        assert set(store.connected_traces(server.trace_id)) >= {server.trace_id, send.trace_id, write.trace_id}
        shown = subprocess.run(
            [
                sys.executable,
                str(Path(settings.BASE_DIR) / "manage.py"),
                "traces_show",
                "--trace-id",
                server.trace_id,
                "--store",
                str(tmp_path / "traces.sqlite3"),
            ],
            env={**os.environ, **stream_env.env},
            cwd=settings.BASE_DIR,
            capture_output=True,
            check=True,
        ).stdout.decode()
        print(shown)
        assert f"trace {server.trace_id}" in shown
        assert "INSERT events [analytics-stream-worker client]" in shown
        assert f"process {stream_env.topic('events')} [analytics-stream-worker consumer]" in shown
    finally:
        web.terminate()
        web.wait(30)


def test_a_metrics_query_gives_one_span_per_clickhouse_query(
    stream_env: StreamEnv, receiver: tuple[SpanStore, int], tmp_path: Path
) -> None:
    store, port = receiver
    _tracing_env(stream_env, port)
    # The web process's own SQLite database (web_start drops DATABASE_URL): migrated, with one user.
    env = {**os.environ, **stream_env.env, "OTEL_TRACING_ENABLED": "false"}
    env.pop("DATABASE_URL", None)
    assert _manage("migrate", "-v0", env=env).wait(120) == 0
    create = (
        "from django.contrib.auth.models import User; from tests.support.auth import metrics_reader_grant; "
        "metrics_reader_grant(User.objects.create_user('tracer', password='tracer-pw-9x'))"
    )
    assert _manage("shell", "-c", create, env=env).wait(60) == 0
    web, web_port = web_start(stream_env, tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
        conn.request(
            "POST",
            "/auth/token",
            body=orjson.dumps({"username": "tracer", "password": "tracer-pw-9x"}),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        token = orjson.loads(response.read())["access"]
        end = datetime.now(UTC).replace(microsecond=0)
        start = end - timedelta(hours=2)
        params = (
            f"metric=events&metric=views&metric=errors&interval=hour&filter=country:ZZ"
            f"&from={start.isoformat().replace('+00:00', 'Z')}&to={end.isoformat().replace('+00:00', 'Z')}"
        )
        conn.request("GET", f"/metrics?{params}", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
        conn.close()

        server = _wait_span(
            store, lambda s: s.kind == "server" and s.name.startswith("GET") and "metrics" in s.name, "the GET's span"
        )

        def queries() -> list[StoredSpan]:
            return [s for s in store.spans(server.trace_id) if s.attributes.get("db.system.name") == "clickhouse"]

        wait_until(lambda: len(queries()) >= 3, timeout=30, interval=0.5, what="three query spans")
        spans = queries()
        assert len(spans) == 3  # one per metric asked, each a ClickHouse query
        for span in spans:
            assert span.kind == "client"
            assert span.parent_span_id == server.span_id  # joined to the request across the query pool's threads
            assert span.attributes["db.operation.name"] == "SELECT"
            text = span.attributes["db.query.text"]
            assert "%(" in text  # placeholders: the statement's shape
            assert "ZZ" not in text  # never the bound values
    finally:
        web.terminate()
        web.wait(30)
