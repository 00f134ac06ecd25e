"""The coalescer's send span: a message carries a ``traceparent`` only when its span is sampled."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased

from analytics_platform import tracing
from ingest.coalescer import Coalescer, Ticket, _Delivery


def _on_error(err: KafkaError) -> None:
    raise AssertionError(err)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Coalescer, list[tuple[_Delivery, object]]]]:
    """A coalescer whose produce records each message's delivery and headers, tracing on at 0 %."""
    provider = TracerProvider(sampler=ParentBased(root=tracing.LinkedOrRatio(0.0)))
    monkeypatch.setattr(tracing, "ENABLED", True)
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    produced: list[tuple[_Delivery, object]] = []

    def produce(partition: int, value: bytes, on_delivery: _Delivery, headers: list[tuple[str, bytes]] | None) -> None:
        produced.append((on_delivery, headers))

    coalescer = Coalescer(produce, _on_error, topic="events")
    yield coalescer, produced
    coalescer.close()


def test_an_unsampled_message_has_no_header_and_a_linked_one_is_sampled(
    sent: tuple[Coalescer, list[tuple[_Delivery, object]]],
) -> None:
    coalescer, produced = sent
    coalescer.submit(Ticket(None), {0: [(b'{"e":1}', 1)]}, linger=0, limit=1 << 20)
    ((delivery, headers),) = produced
    assert headers is None  # ratio 0 and no sampled request: nothing for the worker to continue
    assert delivery.span is None

    request = tracing.tracer.start_span("POST events", context=Context())
    linked = request.get_span_context()
    assert not linked.trace_flags.sampled  # the request itself is not sampled at 0 %, so no link either
    sampled_request = TracerProvider().get_tracer("web").start_span("POST events", context=Context())
    coalescer.submit(Ticket(sampled_request.get_span_context()), {1: [(b'{"e":2}', 1)]}, linger=0, limit=1 << 20)
    delivery, headers = produced[1]
    assert delivery.span is not None and delivery.span.is_recording()
    assert isinstance(headers, list) and tracing.headers_sampled(headers)
    assert [name for name, _ in headers] == ["traceparent"]
