"""Log shipping end to end: a real service process logs, its lines land in the log store.

The process is ``python -m tests.logs.emit_logs`` (Django set up from the environment, as any
command or worker of the service): the test reads its stdout JSON lines and finds the same lines
in osmem by ``request_id``. It points the shipper at osmem through the private
``ELASTICSEARCH_LOGS_NODE_CLASS`` setting (osmem refuses the client's ``compatible-with=8``
media type); everything else is the production configuration from ``ELASTICSEARCH_LOGS_*``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analytics_platform.devstack.processes import free_port
from tests.logs.conftest import new_index_prefix, run_service_process, search_all, service_env
from tests.logs.osmem import Osmem

pytestmark = [pytest.mark.elasticsearch]

SHIPPER_FIELDS = {"@timestamp", "service", "process", "pid", "host"}


@dataclass
class EmitterRun:
    index_prefix: str
    request_id: str
    pid: int
    seconds: float
    lines: list[dict[str, Any]]  # the stdout JSON lines of the request
    stderr: str
    returncode: int


def emitter_run(tmp_path: Path, url: str, *args: str, **env: str) -> EmitterRun:
    prefix = new_index_prefix()
    request_id = uuid.uuid4().hex
    result = run_service_process(
        ["-m", "tests.logs.emit_logs", "--request-id", request_id, *args],
        service_env(tmp_path, ELASTICSEARCH_LOGS_URL=url, ELASTICSEARCH_LOGS_INDEX_PREFIX=prefix, **env),
    )
    assert result.returncode == 0, result.stderr
    stdout = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    summary = next(line["emit_logs"] for line in stdout if "emit_logs" in line)
    lines = [line for line in stdout if line.get("request_id") == request_id]
    return EmitterRun(prefix, request_id, summary["pid"], summary["seconds"], lines, result.stderr, result.returncode)


@pytest.fixture(scope="module")
def shipped(osmem: Osmem, tmp_path_factory: pytest.TempPathFactory) -> EmitterRun:
    """One process that logs a request's lines, forks a child that logs too, and exits normally."""
    return emitter_run(tmp_path_factory.mktemp("emitter"), osmem.url, "--fork")


def test_each_stdout_line_is_in_the_store_with_the_same_fields(shipped: EmitterRun, osmem: Osmem) -> None:
    docs = search_all(osmem, shipped.index_prefix, request_id=shipped.request_id)
    events = ["request_started", "stdlib line formatted", "request_failed", "in_child", "after_fork"]
    assert sorted(line["event"] for line in shipped.lines) == sorted(events)
    assert sorted(doc["event"] for doc in docs) == sorted(events)  # each line once
    by_event = {doc["event"]: doc for doc in docs}
    for line in shipped.lines:
        doc = dict(by_event[line["event"]])
        index = doc.pop("_index")
        # Every field of the stdout line, with the same value (extras such as `path` included) ...
        assert {key: doc.get(key) for key in line} == line
        # ... plus what the shipper adds, and nothing else.
        assert set(doc) - set(line) == SHIPPER_FIELDS
        assert doc["@timestamp"] == line["timestamp"]
        assert doc["service"] == "analytics-platform"
        assert doc["process"] == "emit_logs.py"
        assert doc["host"] == socket.gethostname()
        # The daily index of the line's own timestamp.
        assert index == f"{shipped.index_prefix}-{line['timestamp'][:10].replace('-', '.')}"
    # The fields the brief names are really there: structlog line, stdlib line, span ids, exception.
    failed = by_event["request_failed"]
    assert failed["level"] == "error"
    assert failed["logger"] == "tests.emit"
    assert "ValueError: boom" in failed["exception"]
    assert len(failed["trace_id"]) == 32
    assert len(failed["span_id"]) == 16
    assert by_event["stdlib line formatted"]["trace_id"] == failed["trace_id"]
    assert by_event["stdlib line formatted"]["logger"] == "tests.emit.stdlib"
    assert by_event["request_started"]["path"] == "/events"


def test_a_forked_child_ships_its_own_lines(shipped: EmitterRun, osmem: Osmem) -> None:
    # gunicorn workers and Celery pool children are forks: each must start its own shipper.
    docs = {doc["event"]: doc for doc in search_all(osmem, shipped.index_prefix, request_id=shipped.request_id)}
    assert docs["in_child"]["pid"] != shipped.pid
    assert {docs[event]["pid"] for event in ("request_started", "request_failed", "after_fork")} == {shipped.pid}


def test_the_index_template_maps_the_fields_explicitly(shipped: EmitterRun, osmem: Osmem) -> None:
    client = osmem.client()
    template = client.indices.get_index_template(name=shipped.index_prefix)["index_templates"][0]["index_template"]
    assert template["index_patterns"] == [f"{shipped.index_prefix}-*"]
    mappings = client.indices.get_mapping(index=f"{shipped.index_prefix}-*")
    for index_mapping in mappings.values():
        mapping = index_mapping["mappings"]
        assert str(mapping.get("dynamic")).lower() == "false"  # extras are kept in _source, not mapped
        fields = mapping["properties"]
        for name in ("level", "logger", "request_id", "trace_id", "span_id", "service", "host", "process"):
            assert fields[name]["type"] == "keyword", name
        assert fields["event"]["type"] == "text"
        assert fields["@timestamp"]["type"] == "date_nanos"
        assert fields["timestamp"]["type"] == "date_nanos"
        assert "path" not in fields


def test_elasticsearch_refusing_connections_neither_blocks_nor_breaks_the_process(tmp_path: Path) -> None:
    started = time.monotonic()
    run = emitter_run(tmp_path, f"http://127.0.0.1:{free_port()}", "--lines", "200")
    wall = time.monotonic() - started
    assert run.returncode == 0
    assert len(run.lines) == 3 + 200  # stdout has every line
    assert run.seconds < 2.0, run.seconds  # 203 logging calls: no network wait in them
    assert wall < 15, wall  # start-up (~3 s) + one retry at exit
    warnings = [json.loads(line) for line in run.stderr.splitlines() if "log_shipping" in line]
    assert any("failed" in warning["event"] and "ConnectionError" in warning["event"] for warning in warnings)
    final = warnings[-1]["event"]
    assert final.startswith("log shipping stopped: 203 log records not shipped"), final


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers: a hung or blackholed Elasticsearch."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


def test_a_hung_elasticsearch_delays_exit_only_by_the_exit_timeout(tmp_path: Path, silent_server: int) -> None:
    started = time.monotonic()
    run = emitter_run(
        tmp_path,
        f"http://127.0.0.1:{silent_server}",
        ELASTICSEARCH_LOGS_REQUEST_TIMEOUT_SECONDS="30",
        ELASTICSEARCH_LOGS_EXIT_TIMEOUT_SECONDS="1",
    )
    wall = time.monotonic() - started
    assert run.seconds < 1.0, run.seconds  # the shipper hangs in its request, the logging calls do not
    assert wall < 15, wall  # not the 30 s request timeout
    assert "log shipping stopped: 3 log records not shipped" in run.stderr, run.stderr
