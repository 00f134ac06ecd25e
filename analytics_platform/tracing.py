"""OpenTelemetry: spans for every Django request, exported over OTLP when an endpoint is set.

With no ``OTEL_EXPORTER_OTLP_ENDPOINT`` the provider still creates spans (so log lines carry
trace ids) but exports nothing: a laptop needs no collector.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_configured = False


def configure_tracing() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "analytics-platform")})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # /healthz, /readyz and Prometheus scrapes would otherwise drown real traffic in traces.
    DjangoInstrumentor().instrument(excluded_urls="healthz,readyz,prometheus")
