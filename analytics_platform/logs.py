"""Structured JSON logs on stdout for every process (web, stream workers, Celery, commands).

structlog renders both its own events and stdlib ``logging`` records (Django, gunicorn, Celery,
Quix) as one JSON object per line, so a log shipper can index them without parsing text. Each
line carries the request id and, when a span is active, the OpenTelemetry trace and span ids, so
a log line can be joined to its trace. With ``ELASTICSEARCH_LOGS_URL`` set, the same lines also go
to Elasticsearch from inside each process (``analytics_platform.log_shipping``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import structlog
from opentelemetry import trace


def add_trace_context(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def add_record_timestamp(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Stamp a stdlib record with the time it was made, not the time a handler formats it.

    Every handler (stdout, Elasticsearch) runs the foreign pre-chain on its own; with a clock read
    per handler the same line would carry different timestamps on stdout and in the log store.
    Same format as structlog's ``TimeStamper(fmt="iso", utc=True)``.
    """
    record = event_dict.get("_record")
    if record is not None:
        created = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        event_dict["timestamp"] = created.isoformat().replace("+00:00", "Z")
    return event_dict


_CONTEXT_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
]
SHARED_PROCESSORS: list[Any] = [
    *_CONTEXT_PROCESSORS,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    add_trace_context,
]
FOREIGN_PRE_CHAIN: list[Any] = [
    *_CONTEXT_PROCESSORS,
    add_record_timestamp,
    add_trace_context,
    structlog.stdlib.ExtraAdder(),
]
JSON_RENDERER: list[Any] = [
    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    structlog.processors.format_exc_info,
    structlog.processors.JSONRenderer(),
]


def configure_structlog() -> None:
    """Route structlog through stdlib logging so one handler (settings.LOGGING) renders both."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *SHARED_PROCESSORS,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


logging.captureWarnings(True)
