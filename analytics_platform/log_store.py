"""The Elasticsearch log store: connection, daily indices, their index template, and search.

Every process ships its JSON log lines here when ``ELASTICSEARCH_LOGS_URL`` is set (the handler is
``analytics_platform.log_shipping``); ``manage.py logs_search`` reads them back. One document per
log line, in daily indices ``<prefix>-YYYY.MM.DD`` (the day of the line's own timestamp, UTC), so
retention is deleting old indices (an ILM/ISM policy on ``<prefix>-*``, owned by the cluster).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from elasticsearch import Elasticsearch
from elasticsearch._otel import OpenTelemetry
from elasticsearch_dsl import ComposableIndexTemplate, Mapping, Search

# Priority of the index template: above Elasticsearch's built-in templates (100), which refuse a
# second template with an overlapping pattern at the same priority.
TEMPLATE_PRIORITY = 200
# Severity order of structlog's level names, for "this level and worse" filters.
LEVELS = ("debug", "info", "warning", "error", "critical")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class LogStoreConfig:
    """Where the log store is and how to authenticate; built from settings (the environment)."""

    url: str
    index_prefix: str = "analytics-logs"
    api_key: str = field(default="", repr=False)  # secrets stay out of reprs (tracebacks, debug output)
    username: str = ""
    password: str = field(default="", repr=False)
    ca_certs: str = ""
    request_timeout: float = 10.0
    # Test hook only: the elastic_transport node class. The in-memory server the tests run
    # (osmem) refuses the client's `compatible-with=8` media type; production leaves this None.
    node_class: Any = None

    @property
    def display_url(self) -> str:
        """The URL without credentials, for messages."""
        parts = urlsplit(self.url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def log_store_config_get() -> LogStoreConfig | None:
    """The configuration from Django settings, or None when log shipping is off."""
    from django.conf import settings

    if not settings.ELASTICSEARCH_LOGS_URL:
        return None
    return LogStoreConfig(
        url=settings.ELASTICSEARCH_LOGS_URL,
        index_prefix=settings.ELASTICSEARCH_LOGS_INDEX_PREFIX,
        api_key=settings.ELASTICSEARCH_LOGS_API_KEY,
        username=settings.ELASTICSEARCH_LOGS_USERNAME,
        password=settings.ELASTICSEARCH_LOGS_PASSWORD,
        ca_certs=settings.ELASTICSEARCH_LOGS_CA_CERTS,
        request_timeout=settings.ELASTICSEARCH_LOGS_REQUEST_TIMEOUT_SECONDS,
        # Private, never read from the environment: only tests set it (see LogStoreConfig.node_class).
        node_class=getattr(settings, "ELASTICSEARCH_LOGS_NODE_CLASS", None),
    )


class _UntracedElasticsearch(Elasticsearch):
    """A client without the built-in OpenTelemetry spans.

    elasticsearch-py 8.x has no public switch per client (only the process-wide
    OTEL_PYTHON_INSTRUMENTATION_ELASTICSEARCH_ENABLED), so this replaces its instrumentation object;
    a subclass because ``options()``, which the bulk helpers call, builds a new client of the same type.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._otel = OpenTelemetry(enabled=False)


def log_store_client_create(config: LogStoreConfig, *, traced: bool = True) -> Elasticsearch:
    """A client of its own for each caller (the shipper's thread, a command): no shared state across forks.

    ``traced=False`` turns off the client's built-in OpenTelemetry spans: the shipper's bulk
    request every second in every process would otherwise be exported as traces of their own.
    """
    options: dict[str, Any] = {
        "request_timeout": config.request_timeout,
        # The shipper retries with its own backoff, and a command should fail fast: no transport retries.
        "max_retries": 0,
        "retry_on_timeout": False,
    }
    if config.api_key:
        options["api_key"] = config.api_key
    elif config.username:
        options["basic_auth"] = (config.username, config.password)
    if config.ca_certs:
        options["ca_certs"] = config.ca_certs
    if config.node_class is not None:
        options["node_class"] = config.node_class
    client_class = Elasticsearch if traced else _UntracedElasticsearch
    return client_class(config.url, **options)


def log_index_pattern(prefix: str) -> str:
    return f"{prefix}-*"


def log_index_name(prefix: str, timestamp: str | None, *, now: dt.datetime | None = None) -> str:
    """The daily index of a line: the UTC day of its ISO timestamp (``2026-11-28T...Z``).

    A line logged at 23:59:59.9 and shipped after midnight belongs to the day it was logged.
    """
    if timestamp and len(timestamp) >= 10 and timestamp[4] == "-" and timestamp[7] == "-":
        return f"{prefix}-{timestamp[:4]}.{timestamp[5:7]}.{timestamp[8:10]}"
    day = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"{prefix}-{day:%Y.%m.%d}"


def log_mapping() -> Mapping:
    """Explicit mappings of the fields every line has (or may have) and that people filter on.

    ``dynamic: false``: any other key a log call adds is kept in ``_source`` (printed, visible in
    Kibana) but not indexed. Log extras are free-form; with dynamic mapping the first line decides
    a field's type, and a later line with another type for the same key (``status=200`` then
    ``status="ok"``) is rejected, which for logs means lost lines, and every new key grows the
    mapping.
    """
    mapping = Mapping()
    mapping.meta("dynamic", False)
    # date_nanos, not date: lines of one request are often less than a millisecond apart, and
    # "newest first" should keep their order (structlog stamps microseconds).
    mapping.field("@timestamp", "date_nanos")
    mapping.field("timestamp", "date_nanos")
    for name in ("level", "logger", "request_id", "trace_id", "span_id", "service", "process", "host"):
        mapping.field(name, "keyword")
    mapping.field("pid", "integer")
    # Text for search by words; the keyword sub-field for exact matches and aggregations on
    # structlog's event names (``export_done``), which are short.
    mapping.field("event", "text", fields={"keyword": {"type": "keyword", "ignore_above": 512}})
    mapping.field("exception", "text")
    return mapping


def log_index_template(prefix: str) -> ComposableIndexTemplate:
    template = ComposableIndexTemplate(prefix, log_index_pattern(prefix), priority=TEMPLATE_PRIORITY)
    # Set on the template's own index: Index.as_composable_template() clones the mapping and the
    # clone drops its meta (dynamic: false) in elasticsearch-dsl 8.18.
    template.mapping(log_mapping())
    return template


def log_index_template_install(*, client: Elasticsearch, prefix: str) -> None:
    """Create or update the composable index template of ``<prefix>-*`` (idempotent: PUT of the same body).

    It applies to indices created after it, so the shipper installs it before its first bulk of
    the process; an index of today that already exists keeps its mappings until tomorrow's.
    """
    log_index_template(prefix).save(using=client)


def duration_parse(text: str) -> dt.timedelta:
    """``90s``, ``15m``, ``2h``, ``7d`` -> timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"expected a duration like 30s, 15m, 2h or 7d, got {text!r}")
    return dt.timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def log_records_search(
    *,
    client: Elasticsearch,
    index_prefix: str,
    request_id: str | None = None,
    trace_id: str | None = None,
    level: str | None = None,
    since: dt.timedelta | None = None,
    limit: int = 100,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Log lines as shipped (``_source``), newest first.

    ``level`` keeps that level and the more severe ones (``warning``: warning, error, critical).
    """
    search = Search(using=client, index=log_index_pattern(index_prefix))
    if request_id:
        search = search.filter("term", request_id=request_id)
    if trace_id:
        search = search.filter("term", trace_id=trace_id)
    if level:
        level = level.lower()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        search = search.filter("terms", level=list(LEVELS[LEVELS.index(level) :]))
    if since is not None:
        start = (now or dt.datetime.now(dt.UTC)) - since
        search = search.filter("range", **{"@timestamp": {"gte": start.isoformat()}})
    search = search.sort({"@timestamp": {"order": "desc"}}).extra(size=limit)
    return [hit.to_dict() for hit in search.execute().hits]
