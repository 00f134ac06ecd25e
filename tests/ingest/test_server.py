"""The web process as deployed: gunicorn (gunicorn_conf.py, several workers) in front of the real broker.

Checks what the in-process client cannot: the process model starts, chunked bodies arrive through
gunicorn, the multi-process Prometheus registry sums the workers, and a 202 means on the topic.
"""

from __future__ import annotations

import gzip
import http.client
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from django.conf import settings

from analytics_platform.devstack import processes
from tests.ingest.conftest import TopicReader, body_of, event_make

pytestmark = [pytest.mark.kafka]


@pytest.fixture(scope="module")
def server(kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    var = tmp_path_factory.mktemp("web-var")
    prom = var / "prometheus"
    prom.mkdir()
    port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.address,
        "INGEST_ALLOWLIST_ENABLED": "false",  # no Django tables in this throwaway var dir
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "4",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
        ],
        env=env,
        cwd=settings.BASE_DIR,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=process)
        yield port
    finally:
        process.send_signal(signal.SIGINT)  # quick shutdown: no need to drain keep-alive connections
        process.wait(timeout=30)


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_gunicorn_serves_ingest_plain_gzip_and_chunked(server: int, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    headers = {"Content-Type": "application/json"}
    status, _, body = request(server, "POST", "/events", body_of([event_make(userId=user)]), headers)
    assert status == 202, body
    status, _, body = request(
        server,
        "POST",
        "/events",
        gzip.compress(body_of([event_make(userId=user)])),
        {**headers, "Content-Encoding": "gzip"},
    )
    assert status == 202, body

    payload = body_of([event_make(userId=user), event_make(userId=user, type="NOPE")])
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/events")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    half = len(payload) // 2
    for chunk in (payload[:half], payload[half:]):
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    result = msgspec.json.decode(response.read())
    conn.close()
    assert response.status == 202, result
    assert (result["accepted"], result["rejected"]) == (1, 1)

    messages = topic_reader.messages_for({user}, expected=3)
    assert sum(len(msgspec.json.decode(m.value())["events"]) for m in messages) == 3


def test_prometheus_sums_the_workers(server: int) -> None:
    for _ in range(6):  # spread over the workers (each connection may land on either)
        status, _, _ = request(server, "POST", "/events", b"{", {"Content-Type": "application/json"})
        assert status == 400
    status, _, text = request(server, "GET", "/prometheus/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    [line] = [x for x in lines if x.startswith('ingest_requests_total{code="malformed_json",status="400"}')]
    assert float(line.rsplit(" ", 1)[1]) == 6
    assert any(x.startswith("ingest_request_duration_seconds_bucket") for x in lines)
