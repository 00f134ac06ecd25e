"""The direct OTLP encoder: the same message as the SDK's encoder, for every kind of span we make and more."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceState
from opentelemetry.trace.propagation import set_span_in_context

from analytics_platform import tracing
from analytics_platform.otlp_encode import spans_encode


class _Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _spans() -> list[ReadableSpan]:
    """Spans of two providers (two resources), two scopes, every attribute type, events, links, errors."""
    kept = _Keep()
    first = TracerProvider(resource=Resource.create({"service.name": "analytics-web", "n": 3}))
    second = TracerProvider(resource=Resource({"service.name": "other"}, schema_url="https://schema/1"))
    for provider in (first, second):
        provider.add_span_processor(SimpleSpanProcessor(kept))
    web = first.get_tracer("analytics_platform")
    versioned = first.get_tracer("lib", "1.2", schema_url="https://schema/lib", attributes={"scope.attr": "x"})
    with web.start_as_current_span("POST events", kind=SpanKind.SERVER) as server:
        server.set_attributes({"http.route": "events", "http.response.status_code": 202, "url.path": "/événements"})
    remote = tracing.headers_extract(
        [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), ("tracestate", b"a=1,b=2")]
    )
    with web.start_as_current_span("process t", context=remote, kind=SpanKind.CONSUMER) as process:
        process.set_attributes({"messaging.kafka.offset": 2**40, "neg": -7, "zero": 0})
    send = web.start_span(
        "send t",
        kind=SpanKind.PRODUCER,
        links=[Link(server.get_span_context()), Link(process.get_span_context(), {"why": "batch", "n": 1})],
        attributes={"flag": True, "off": False, "ratio": 0.25, "nan-ish": -1e300, "list": ["a", "b"], "ints": (1, 2)},
    )
    send.add_event("retry", {"attempt": 2})
    send.add_event("no attributes")
    send.set_status(Status(StatusCode.ERROR, "broker refused"))
    send.end()
    with versioned.start_as_current_span("child", context=set_span_in_context(send)) as child:
        child.set_status(Status(StatusCode.OK))
        child.set_attribute("int-then-bool", 1)
    with versioned.start_as_current_span("bool", kind=SpanKind.CLIENT) as other:
        other.set_attribute("int-then-bool", True)  # True == 1: must not come out as the int's encoding
        other.set_attribute("beyond-int64", 1 << 64)  # dropped alone by either encoder
        other.set_attribute("long", "x" * 5000)
    with second.get_tracer("t").start_as_current_span(""):
        pass
    try:
        with web.start_as_current_span("fails"):
            raise ValueError("boom")
    except ValueError:
        pass
    return kept.spans


def test_the_bytes_parse_to_the_sdk_encoders_message() -> None:
    spans = _spans()
    assert len(spans) == 7
    ours = ExportTraceServiceRequest.FromString(spans_encode(spans))
    assert ours == encode_spans(spans)
    # Twice, since the KeyValue cache now answers for the repeated attributes.
    assert ExportTraceServiceRequest.FromString(spans_encode(spans)) == encode_spans(spans)
    assert spans_encode([]) == b""


def test_injected_headers_round_trip_and_malformed_ones_give_no_context() -> None:
    from opentelemetry import trace

    provider = TracerProvider()
    span = provider.get_tracer("t").start_span("send", context=None)
    headers = tracing.headers_inject(span)
    assert [name for name, _ in headers] == ["traceparent"]
    assert tracing.headers_sampled(headers)
    ctx = trace.get_current_span(tracing.headers_extract(headers)).get_span_context()
    sent = span.get_span_context()
    assert (ctx.trace_id, ctx.span_id, ctx.trace_flags, ctx.is_remote) == (
        sent.trace_id,
        sent.span_id,
        sent.trace_flags,
        True,
    )
    good = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    stated = trace.get_current_span(
        tracing.headers_extract([("traceparent", good), ("tracestate", b"k=v")])
    ).get_span_context()
    assert stated.trace_state == TraceState([("k", "v")])
    for bad in (
        b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01",  # all-zero trace id
        b"00-0af7651916cd43dd8448eb211c80319c-" + b"0" * 16 + b"-01",  # all-zero span id
        good.upper(),
        b"01" + good[2:],  # a version this parser does not know
        good + b"-extra",
        good[:-1],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # str, not bytes
        None,
    ):
        assert not trace.get_current_span(tracing.headers_extract([("traceparent", bad)])).get_span_context().is_valid
    # The first traceparent counts; an undecodable tracestate loses the state, not the trace.
    first = tracing.headers_extract([("traceparent", good), ("traceparent", b"junk"), ("tracestate", b"\xff")])
    assert trace.get_current_span(first).get_span_context().span_id == int(good[36:52], 16)


def test_current_span_records_what_escapes_and_ends_the_span() -> None:
    from opentelemetry import trace
    from opentelemetry.context import Context

    kept = _Keep()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(kept))
    span = provider.get_tracer("t").start_span("process t", context=Context())
    try:
        with tracing.CurrentSpan(span, Context()):
            assert trace.get_current_span() is span
            raise KeyError("lost")
    except KeyError:
        pass
    assert trace.get_current_span() is not span
    (ended,) = kept.spans
    assert ended.status.status_code is StatusCode.ERROR
    assert [event.name for event in ended.events] == ["exception"]
    with tracing.CurrentSpan(provider.get_tracer("t").start_span("ok", context=Context()), Context()):
        pass
    assert kept.spans[-1].status.status_code is StatusCode.UNSET
