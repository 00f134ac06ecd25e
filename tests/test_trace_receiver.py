"""The local OTLP/HTTP receiver (``manage.py otlp_receiver``) as a real process, against hostile senders.

It must store what the SDK's exporter sends, refuse everything else without storing anything, and
with ``OTEL_EXPORTER_OTLP_TOKEN`` set accept only that bearer token.
"""

from __future__ import annotations

import gzip
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from analytics_platform import tracing
from analytics_platform.otlp_encode import FastOTLPSpanExporter
from analytics_platform.trace_store import SpanStore

TOKEN = "receiver-test-token-0123456789abcdef"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    store = tmp_path / "traces.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        {
            "ANALYTICS_VAR_DIR": str(tmp_path / "var"),
            "DJANGO_SECRET_KEY": "receiver-not-secret",
            "OTEL_EXPORTER_OTLP_TOKEN": TOKEN,
        }
    )
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(settings.BASE_DIR) / "manage.py"),
            "otlp_receiver",
            "--port",
            "0",
            "--store",
            str(store),
        ],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert "listening on 127.0.0.1:" in line, line
        yield int(line.rsplit(":", 1)[1]), store
    finally:
        process.terminate()
        process.wait(10)


def _post(port: int, body: bytes, headers: dict[str, str], path: str = "/v1/traces") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def _exported(port: int, token: str | None, exporter_class: type[OTLPSpanExporter] = OTLPSpanExporter) -> bool:
    """Export one span with the SDK's own OTLP/HTTP exporter (or ours); whether the receiver accepted it."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    exporter = exporter_class(endpoint=f"http://127.0.0.1:{port}/v1/traces", headers=headers, timeout=5)
    provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test"}))
    results: list[bool] = []

    class Recording(SimpleSpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            results.append(exporter.export([span]).name == "SUCCESS")

    provider.add_span_processor(Recording(exporter))
    with provider.get_tracer("t").start_as_current_span("GET metrics", kind=SpanKind.SERVER) as span:
        span.set_attribute("db.query.text", "SELECT 1")
    provider.shutdown()
    return results == [True]


def test_the_sdk_exporter_is_stored_and_hostile_posts_are_refused(receiver: tuple[int, Path]) -> None:
    port, store_path = receiver
    authorized = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN}"}

    assert _exported(port, None) is False  # no token
    assert _exported(port, "wrong-token") is False
    assert _exported(port, TOKEN) is True
    assert _exported(port, "wrong-token", FastOTLPSpanExporter) is False  # what the services export with
    assert _exported(port, TOKEN, FastOTLPSpanExporter) is True

    assert _post(port, b"\xff\xff\xff", authorized) == 400  # not a protobuf message
    assert _post(port, b"{}", {**authorized, "Content-Type": "application/json"}) == 415
    assert _post(port, b"x", authorized, path="/v1/logs") == 404
    assert _post(port, b"x", {**authorized, "Content-Encoding": "br"}) == 415
    # A gzip bomb: 64 MiB of zeros in a small body, refused before it is decoded in full.
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    assert _post(port, bomb, {**authorized, "Content-Encoding": "gzip"}) == 400
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("POST", "/v1/traces")
    for name, value in authorized.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(100 * 1024 * 1024))  # declared, never sent
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()

    store = SpanStore(store_path)
    try:
        spans = store.spans()
        assert [(s.name, s.service, s.kind) for s in spans] == [("GET metrics", "receiver-test", "server")] * 2
        assert [s.attributes for s in spans] == [{"db.query.text": "SELECT 1"}] * 2
    finally:
        store.close()


def test_only_a_sampled_traceparent_gets_a_worker_span() -> None:
    sampled = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.headers_sampled([("traceparent", sampled)])
    assert not tracing.headers_sampled([("traceparent", sampled[:-2] + b"00")])
    assert not tracing.headers_sampled([("traceparent", sampled + b"0")])  # malformed length
    assert not tracing.headers_sampled([("traceparent", None)])
    assert not tracing.headers_sampled([("other", sampled)])
    assert not tracing.headers_sampled(None)
    ctx = tracing.headers_extract([("traceparent", sampled)])
    from opentelemetry import trace

    assert format(trace.get_current_span(ctx).get_span_context().trace_id, "032x") == sampled[3:35].decode()
    assert (
        not trace.get_current_span(tracing.headers_extract([("traceparent", b"\xff" * 55)])).get_span_context().is_valid
    )


def test_a_celery_task_runs_in_the_trace_that_enqueued_it(receiver: tuple[int, Path], tmp_path: Path) -> None:
    """A real worker (threads pool, filesystem broker) and a real enqueuing process, both exporting."""
    port, store_path = receiver
    var = tmp_path / "celery-var"
    for sub in ("celery/queue", "celery/processed", "celery/control"):
        (var / sub).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        {
            "ANALYTICS_VAR_DIR": str(var),
            "DJANGO_SECRET_KEY": "celery-tracing-not-secret",
            "OTEL_TRACING_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
            "OTEL_EXPORTER_OTLP_TOKEN": TOKEN,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "ELASTICSEARCH_ERRORS_URL": "",  # the task then returns at once
            "PYTHONPATH": str(settings.BASE_DIR),
        }
    )
    celery = str(Path(sys.executable).parent / "celery")
    worker = subprocess.Popen(
        [celery, "-A", "analytics_platform", "--quiet", "worker", "-l", "WARNING", "-c", "1", "--pool", "threads"],
        env=env,
        cwd=settings.BASE_DIR,
        stdout=open(tmp_path / "celery.log", "wb"),  # noqa: SIM115 -- lives with the process
        stderr=subprocess.STDOUT,
    )
    try:
        enqueue = "from streams.tasks import player_error_indices_prune_task as t; t.delay()"
        subprocess.run(
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "shell", "-c", enqueue],
            env=env,
            cwd=settings.BASE_DIR,
            check=True,
            timeout=60,
        )
        store = SpanStore(store_path)
        try:
            name = "streams.tasks.player_error_indices_prune"
            found: dict[str, list[Any]] = {}

            def both() -> bool:
                spans = store.spans()
                found["publish"] = [s for s in spans if s.kind == "producer" and name in s.name]
                found["run"] = [s for s in spans if s.kind == "consumer" and name in s.name]
                return bool(found["publish"] and found["run"])

            deadline = time.monotonic() + 60
            while not both() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert found.get("publish") and found.get("run"), (tmp_path / "celery.log").read_text()[-2000:]
            publish, run = found["publish"][0], found["run"][0]
            assert publish.service == "analytics-web"  # manage.py shell
            assert run.service == "analytics-celery"
            assert run.trace_id == publish.trace_id and run.parent_span_id == publish.span_id
        finally:
            store.close()
    finally:
        worker.terminate()
        worker.wait(30)
