"""OpenTelemetry across the pipeline: Django requests, Kafka messages, the stream worker, ClickHouse, Celery.

Off (``OTEL_TRACING_ENABLED=false``, the default) no tracer provider is installed: the API hands
out no-op spans, and the hot paths (the coalescer's produce, the worker's per-message step, the
sink's INSERTs) test :data:`ENABLED` and skip their tracing code altogether, so tracing off
costs a branch. On: one ``TracerProvider`` per process, named after the process (web, stream
worker, Celery), an OTLP/HTTP exporter (our encoder, :mod:`analytics_platform.otlp_encode`) behind
a ``BatchSpanProcessor`` (spans leave from its thread, never from a request's), and a parent-based
ratio sampler.

How a trace follows an event (the messaging semantic conventions): the request's server span;
the coalescer's ``send`` span, the root of a trace of its own because one message carries the
events of several requests, with a link to each request's span and its context in the message's
``traceparent`` header; the worker's ``process`` span, a child of that context; the sink's
``INSERT`` spans, which write many messages at once and so link to their process spans.

Inbound ``traceparent`` headers are ignored (:class:`ServerSpanMiddleware` starts every request's
trace afresh): every caller of this service is a player or a browser on the internet, and a trace
id or sampled flag the client picks would let it join its requests to someone else's trace or
force sampling (and export cost) at will.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes

# True once this process exports spans; read by the hot paths before doing any tracing work.
ENABLED = False
# A span keeps at most this many links (the SDK's default limit): a chunk of the sink or a
# coalesced message may hold thousands of messages or requests.
MAX_LINKS = 128
_MIDDLEWARE = "analytics_platform.tracing.ServerSpanMiddleware"
_UNTRACED_PREFIXES = ("/healthz", "/readyz", "/prometheus")

tracer = trace.get_tracer("analytics_platform")


class LinkedOrRatio(Sampler):
    """A root span is sampled when any span it links to was, otherwise at ``ratio``.

    The coalescer's send span and the sink's INSERT spans are roots that stand for many sampled
    or unsampled requests: sampling them on their own ratio would lose the middle of most sampled
    requests' paths at 10 %.
    """

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(  # noqa: PLR0917 -- the Sampler interface
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if links and any(link.context.trace_flags.sampled for link in links):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"LinkedOrRatio{{{self._ratio.get_description()}}}"


def service_name() -> str:
    """``OTEL_SERVICE_NAME``, or one named after what this process runs."""
    if settings.OTEL_SERVICE_NAME:
        return str(settings.OTEL_SERVICE_NAME)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if "celery" in program:
        return "analytics-celery"
    if len(sys.argv) > 1 and sys.argv[1] == "run_stream":
        return "analytics-stream-worker"
    return "analytics-web"


def configure_tracing(*, force: bool = False) -> None:
    """Install the process's provider when tracing is on (once; ``force`` re-reads the settings)."""
    global ENABLED
    if ENABLED and not force:
        return
    if not settings.OTEL_TRACING_ENABLED:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from analytics_platform.otlp_encode import FastOTLPSpanExporter

    headers = (
        {"Authorization": f"Bearer {settings.OTEL_EXPORTER_OTLP_TOKEN}"} if settings.OTEL_EXPORTER_OTLP_TOKEN else None
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name()}),
        sampler=ParentBased(root=LinkedOrRatio(settings.OTEL_TRACES_SAMPLER_RATIO)),
    )
    provider.add_span_processor(
        BatchSpanProcessor(FastOTLPSpanExporter(endpoint=settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, headers=headers))
    )
    trace.set_tracer_provider(provider)
    # First: the span covers every other middleware, as the request's server span should.
    middleware = list(settings.MIDDLEWARE)
    if _MIDDLEWARE not in middleware:
        settings.MIDDLEWARE = [_MIDDLEWARE, *middleware]
    # Publish spans for enqueued tasks and run spans in the worker, parented through the message headers.
    CeleryInstrumentor().instrument()
    ENABLED = True


class ServerSpanMiddleware:
    """The server span of a request: a new trace, named ``METHOD route``.

    Ours rather than opentelemetry-instrumentation-django's, by measured cost: that middleware
    added about 190 us of CPU to every request even unsampled (its span name resolves the URL a
    second time, it collects some twenty attributes and records metrics), as much as half of what
    the request costs without tracing; this one costs a sampling decision when the request is
    not sampled. It never extracts a client's ``traceparent`` (see the module docstring).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        # Probes and Prometheus scrapes would otherwise drown real traffic in traces.
        if path.startswith(_UNTRACED_PREFIXES):
            return self.get_response(request)
        method = request.method or "GET"
        span = tracer.start_span(method, context=Context(), kind=SpanKind.SERVER)
        token = otel_context.attach(trace.set_span_in_context(span, Context()))
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django turns view errors into responses; this is what escaped it
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        finally:
            otel_context.detach(token)
        if span.is_recording():
            match = request.resolver_match
            route = match.route if match is not None else ""
            if route:
                span.update_name(f"{method} {route}")
            status = response.status_code
            span.set_attributes(
                {
                    "http.request.method": method,
                    "url.path": path,
                    "http.route": route,
                    "http.response.status_code": status,
                }
            )
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        return response


def current_link() -> SpanContext | None:
    """The current span's context when it is sampled (something worth linking to), else None."""
    ctx = trace.get_current_span().get_span_context()
    return ctx if ctx.is_valid and ctx.trace_flags.sampled else None


def links_of(contexts: Iterable[SpanContext | None]) -> list[Link]:
    """Links to the distinct valid contexts, at most :data:`MAX_LINKS`."""
    links: list[Link] = []
    seen: set[int] = set()
    for ctx in contexts:
        if ctx is None or ctx.span_id in seen:
            continue
        seen.add(ctx.span_id)
        links.append(Link(ctx))
        if len(links) >= MAX_LINKS:
            break
    return links


def headers_inject(span: trace.Span) -> list[tuple[str, bytes]]:
    """Kafka headers carrying ``span``'s context: W3C ``traceparent`` (and ``tracestate`` when set).

    Written here rather than through the global propagator, by measured cost: the composite
    propagator (trace context and baggage, a dict carrier, then the pairs encoded) took 3.7 us
    per message, this a fraction of that; the worker reads only these two headers anyway.
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return []
    headers = [("traceparent", b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, ctx.trace_flags))]
    if ctx.trace_state:
        headers.append(("tracestate", ctx.trace_state.to_header().encode()))
    return headers


# W3C trace context, version 00: lowercase hex only (what headers_inject writes).
_TRACEPARENT = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def headers_extract(headers: Any) -> Context:
    """The context a producer put in a message's headers (empty when none or malformed).

    Parsed here, not by the global propagator (4.2 us a message, for a regex and a Context):
    the first ``traceparent`` header counts, an all-zero trace or span id is invalid (the W3C
    rule), a ``tracestate`` the SDK cannot parse is dropped, not the trace.
    """
    traceparent = tracestate = None
    for name, value in headers or ():
        if name == "traceparent" and traceparent is None:
            traceparent = value
        elif name == "tracestate" and tracestate is None:
            tracestate = value
    if not isinstance(traceparent, bytes):
        return Context()
    match = _TRACEPARENT.fullmatch(traceparent)
    if match is None:
        return Context()
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return Context()
    state = None
    if isinstance(tracestate, bytes):
        try:
            state = TraceState.from_header([tracestate.decode("ascii")])
        except UnicodeDecodeError:
            state = None
    span_context = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16)), trace_state=state
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context), Context())


def headers_sampled(headers: Any) -> bool:
    """Whether a message carries a ``traceparent`` whose sampled flag is set (a cheap look, no parsing).

    The worker spends a span only on such messages: a parent-based sampler would drop the child
    of an unsampled send span anyway, and a message with no context (a tick, a producer with
    tracing off) has no trace to continue.
    """
    for name, value in headers or ():
        if name == "traceparent":
            # 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>: bit 0 of the flags is "sampled".
            return isinstance(value, bytes) and len(value) == 55 and value[54] in b"13579bdfBDF"
    return False


@contextmanager
def context_attached(ctx: Context) -> Iterator[None]:
    """Run a block under ``ctx``: a pool thread does not inherit the submitting thread's context."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


class CurrentSpan:
    """Make ``span`` current within ``parent`` for a block, record what escapes it, end it.

    start_as_current_span's behaviour (exception recorded, status ERROR, span ended) as a plain
    class: its generator-based context managers cost a few us per message in the worker.
    """

    __slots__ = ("_parent", "_span", "_token")

    def __init__(self, span: trace.Span, parent: Context) -> None:
        self._span = span
        self._parent = parent

    def __enter__(self) -> trace.Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span, self._parent))
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and self._span.is_recording():
                self._span.record_exception(exc)
                self._span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            otel_context.detach(self._token)
            self._span.end()
