"""The shipper's handler in this process, against osmem: counters, backoff, drops, the queue bound.

Handlers here are made in code with a ``LogStoreConfig`` whose ``node_class`` is the test double
``PlainJsonNode`` (osmem refuses the client's ``compatible-with=8`` media type; production never
sets it). Each one logs through a logger of its own that does not propagate, so the test's lines
reach only that handler.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from analytics_platform import log_shipping
from analytics_platform.devstack.processes import free_port
from analytics_platform.log_shipping import ElasticsearchLogHandler
from analytics_platform.log_store import LogStoreConfig, log_store_client_create
from tests.logs.conftest import search_all
from tests.logs.osmem import Osmem, PlainJsonNode, osmem_start

pytestmark = [pytest.mark.elasticsearch]


def counter(metric: Any, **labels: str) -> float:
    return metric.labels(**labels)._value.get() if labels else metric._value.get()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.fixture
def make_logger() -> Iterator[Callable[[ElasticsearchLogHandler], logging.Logger]]:
    attached: list[tuple[logging.Logger, ElasticsearchLogHandler]] = []

    def make(handler: ElasticsearchLogHandler) -> logging.Logger:
        logger = logging.getLogger(f"tests.shipping.{uuid.uuid4().hex[:8]}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        attached.append((logger, handler))
        return logger

    yield make
    for logger, handler in attached:
        logger.removeHandler(handler)
        handler.close()


def test_a_full_queue_drops_new_lines_counts_them_and_never_blocks(
    osmem: Osmem, index_prefix: str, make_logger, capsys
) -> None:
    entered, gate = threading.Event(), threading.Event()

    class GatedNode(PlainJsonNode):
        """Holds every bulk request until the test opens the gate: a stalled Elasticsearch."""

        def perform_request(self, method: str, target: str, *args: Any, **kwargs: Any) -> Any:
            if "_bulk" in target:
                entered.set()
                gate.wait(20)
            return super().perform_request(method, target, *args, **kwargs)

    config = LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=GatedNode)
    handler = ElasticsearchLogHandler(config=config, queue_size=50, batch_size=10, flush_interval=5)
    log = make_logger(handler)
    full_before = counter(log_shipping.records_dropped, reason="queue_full")
    shipped_before = counter(log_shipping.records_shipped)
    try:
        for index in range(10):
            log.info("line %d", index)
        assert entered.wait(10)  # the thread holds exactly one batch (10 lines), stuck in its request
        started = time.perf_counter()
        for index in range(10, 200):
            log.info("line %d", index)
        elapsed = time.perf_counter() - started
    finally:
        gate.set()
    assert elapsed < 0.5, elapsed  # 190 calls while the shipper is stuck: none waited
    # 50 fit in the queue; the other 140 were dropped and counted.
    assert counter(log_shipping.records_dropped, reason="queue_full") - full_before == 140
    assert handler.flush_wait(10)
    assert counter(log_shipping.records_shipped) - shipped_before == 60
    events = sorted(doc["event"] for doc in search_all(osmem, index_prefix))
    assert events == sorted(f"line {index}" for index in range(60))  # the oldest kept, the newest dropped
    handler.close()
    assert "log queue full (50): 140 log records dropped" in capsys.readouterr().err


def test_an_unreachable_store_counts_failures_and_drops_and_warns_once(index_prefix: str, make_logger, capsys) -> None:
    config = LogStoreConfig(url=f"http://127.0.0.1:{free_port()}", index_prefix=index_prefix, node_class=PlainJsonNode)
    handler = ElasticsearchLogHandler(config=config, flush_interval=0.05, initial_backoff=0.05, max_backoff=0.1)
    log = make_logger(handler)
    failures_before = counter(log_shipping.bulk_failures, reason="connection")
    dropped_before = counter(log_shipping.records_dropped, reason="shutdown")
    shipped_before = counter(log_shipping.records_shipped)
    started = time.perf_counter()
    for index in range(50):
        log.warning("line %d", index)
    assert time.perf_counter() - started < 0.5
    wait_until(lambda: counter(log_shipping.bulk_failures, reason="connection") - failures_before >= 3)
    handler.close()
    assert counter(log_shipping.records_dropped, reason="shutdown") - dropped_before == 50
    assert counter(log_shipping.records_shipped) == shipped_before
    err = capsys.readouterr().err
    # Three or more failed attempts, one warning for them (rate-limited), one final report.
    assert err.count("log shipping to http://127.0.0.1:") == 1, err
    assert "log shipping stopped: 50 log records not shipped" in err


def test_a_batch_is_kept_and_shipped_once_when_elasticsearch_comes_back(index_prefix: str, make_logger) -> None:
    port = free_port()
    config = LogStoreConfig(url=f"http://127.0.0.1:{port}", index_prefix=index_prefix, node_class=PlainJsonNode)
    handler = ElasticsearchLogHandler(config=config, flush_interval=0.05, initial_backoff=0.1, max_backoff=0.3)
    log = make_logger(handler)
    failures_before = counter(log_shipping.bulk_failures, reason="connection")
    shipped_before = counter(log_shipping.records_shipped)
    for index in range(5):
        log.info("line %d", index)
    wait_until(lambda: counter(log_shipping.bulk_failures, reason="connection") > failures_before)
    server = osmem_start(port)
    try:
        assert handler.flush_wait(10)
        assert counter(log_shipping.records_shipped) - shipped_before == 5
        events = sorted(doc["event"] for doc in search_all(server, index_prefix))
        assert events == [f"line {index}" for index in range(5)]
    finally:
        handler.close()
        server.stop()


def test_a_document_the_store_refuses_is_dropped_alone(osmem: Osmem, index_prefix: str, make_logger) -> None:
    config = LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=PlainJsonNode)
    handler = ElasticsearchLogHandler(config=config, flush_interval=0.05)
    log = make_logger(handler)
    rejected_before = counter(log_shipping.records_dropped, reason="rejected")
    log.info("good one")
    log.info("bad one", extra={"pid": "not a number"})  # `pid` is mapped as an integer
    log.info("good two")
    assert handler.flush_wait(10)
    assert counter(log_shipping.records_dropped, reason="rejected") - rejected_before == 1
    assert sorted(doc["event"] for doc in search_all(osmem, index_prefix)) == ["good one", "good two"]


def test_lines_logged_by_the_shipper_thread_are_not_shipped(osmem: Osmem, index_prefix: str, make_logger) -> None:
    # The client logs its requests (elastic_transport) on the shipper's thread: shipping those
    # would make every bulk request produce the next one.
    config = LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=PlainJsonNode)
    handler = ElasticsearchLogHandler(config=config, flush_interval=0.05)
    transport_logger = logging.getLogger("elastic_transport.transport")
    level = transport_logger.level
    transport_logger.setLevel(logging.INFO)
    transport_logger.addHandler(handler)
    try:
        make_logger(handler).info("application line")
        assert handler.flush_wait(10)
        time.sleep(0.3)  # a feedback loop would ship the transport's lines in the next batches
        assert handler.flush_wait(10)
        assert [doc["event"] for doc in search_all(osmem, index_prefix)] == ["application line"]
    finally:
        transport_logger.removeHandler(handler)
        transport_logger.setLevel(level)


class _Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.active = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self.spans.append(span)


def test_shipping_creates_no_traces(osmem: Osmem, index_prefix: str, make_logger) -> None:
    # elasticsearch-py traces its requests itself; a bulk request every second per process
    # would otherwise be exported as traces of their own.
    recorder = _Recorder()
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        # Tracing is off in tests (no provider installed): record as a process with it on would.
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(recorder)
    try:
        config = LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=PlainJsonNode)
        handler = ElasticsearchLogHandler(config=config, flush_interval=0.05)
        make_logger(handler).info("application line")
        assert handler.flush_wait(10)
        log_store_client_create(config).info()  # an ordinary client is traced: the recorder works
    finally:
        recorder.active = False
    assert [span.name for span in recorder.spans] == ["info"]


def test_credentials_from_the_configuration_are_sent(osmem: Osmem) -> None:
    seen: list[str] = []

    class RecordingNode(PlainJsonNode):
        def perform_request(self, method: str, target: str, *args: Any, **kwargs: Any) -> Any:
            seen.append(kwargs["headers"].get("authorization", ""))
            return super().perform_request(method, target, *args, **kwargs)

    log_store_client_create(LogStoreConfig(url=osmem.url, api_key="a2V5OnNlY3JldA==", node_class=RecordingNode)).info()
    log_store_client_create(
        LogStoreConfig(url=osmem.url, username="shipper", password="pw", node_class=RecordingNode)
    ).info()
    assert seen == ["ApiKey a2V5OnNlY3JldA==", "Basic " + base64.b64encode(b"shipper:pw").decode()]


def test_a_celery_pool_child_ships_its_lines_before_it_leaves(osmem: Osmem, index_prefix: str, make_logger) -> None:
    # Prefork children end with os._exit (no atexit); the worker_process_shutdown receiver in
    # analytics_platform/celery.py flushes instead.
    from celery import signals

    config = LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=PlainJsonNode)
    handler = ElasticsearchLogHandler(config=config, flush_interval=30)  # only a flush ships before 30 s
    make_logger(handler).info("task done")
    signals.worker_process_shutdown.send(sender="celery@test", pid=0, exitcode=0)
    assert [doc["event"] for doc in search_all(osmem, index_prefix)] == ["task done"]
