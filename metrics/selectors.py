"""Reads of the metrics capability: definitions from Django's database, series from ClickHouse.

``metric_answers`` is the single path the API, the dashboards and the admin preview share, so they
all see the same numbers, the same validation and the same cache: the API through
``metric_timeseries_json`` (rendered JSON), the pages through ``metric_timeseries_get`` and, for
the several questions of one page at once, ``metric_timeseries_get_many`` (data).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Required, TypedDict, Unpack

import orjson
from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind, Status, StatusCode

from analytics_platform import tracing
from analytics_platform.clickhouse import client_get
from analytics_platform.errors import ApplicationError
from metrics import bounds, query
from metrics.models import MetricDefinition

logger = logging.getLogger(__name__)
_local = threading.local()
# Metrics of one request run side by side, each on its own connection (the server answers
# connections in parallel): a dashboard row of three metrics costs about one query, not three.
_POOL_PREFIX = "metrics-query"
_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=_POOL_PREFIX)
_SOCKET_MARGIN_SECONDS = 10


def _client() -> Client:
    """One clickhouse-driver client per thread, reused across requests.

    Connecting costs a handshake per request otherwise, a visible share of a 50 ms budget. The key
    follows the ``clickhouse`` connection settings, which the test runner rewrites, and the time
    limit: the socket gives up a little after the server should have stopped the query itself, so
    a server that ignores the limit cannot hold a web worker for the driver's default 300 s.
    """
    db = connections["clickhouse"].settings_dict
    limit = settings.METRICS_QUERY_MAX_EXECUTION_SECONDS
    key = (db["HOST"], int(db["PORT"]), db["NAME"], limit)
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != key:
        _client_drop()
        overrides: dict[str, Any] = {"send_receive_timeout": limit + _SOCKET_MARGIN_SECONDS} if limit else {}
        cached = (key, client_get(**overrides))
        _local.client = cached
    client: Client = cached[1]
    return client


def _client_drop() -> None:
    cached = getattr(_local, "client", None)
    _local.client = None
    if cached is not None:
        with contextlib.suppress(Exception):  # already broken: closing is best effort
            cached[1].disconnect()


#: ClickHouse error codes of a query stopped by a limit of its own (not a fault of the server):
#: TOO_MANY_ROWS, TIMEOUT_EXCEEDED, TOO_SLOW (estimated to exceed the time limit), MEMORY_LIMIT_EXCEEDED,
#: TOO_MANY_BYTES.
_LIMIT_CODES = {158: "rows", 159: "time", 160: "time", 241: "memory", 307: "bytes"}
_TOO_MANY_ROWS = 158
#: A load condition of the server (its max_concurrent_queries), not of the question: retrying helps.
_TOO_MANY_SIMULTANEOUS_QUERIES = 202


def query_limits(*, deadline: float | None = None) -> dict[str, Any]:
    """ClickHouse settings a metrics query runs under (read per query: tests override them).

    ``deadline`` (``time.monotonic()``) is the request's: the queries of one request share its
    time budget, so a request of 20 metrics (5 rounds on the pool's 4 threads) is answered within
    one limit too, not five. ``timeout_overflow_mode = 'throw'`` is explicit because ``break`` (a
    server or profile default some deployments set) would return the rows read so far as if they
    were the answer.
    """
    seconds = float(settings.METRICS_QUERY_MAX_EXECUTION_SECONDS)
    if deadline is not None and seconds > 0:
        # Whole seconds (rounded up): the server SETs a setting again only when its value
        # changes, so the first queries of every request keep the same value and cost no extra
        # statement; the last second of a budget may overrun by less than a second.
        remaining = deadline - time.monotonic()
        seconds = min(seconds, float(math.ceil(remaining))) if remaining > 0 else 0.0
    return {
        "max_execution_time": seconds,
        "timeout_overflow_mode": "throw",
        "max_memory_usage": settings.METRICS_QUERY_MAX_MEMORY_BYTES,
    }


def _too_expensive(kind: str) -> ApplicationError:
    memory = settings.METRICS_QUERY_MAX_MEMORY_BYTES
    limits = {
        "time": f"{settings.METRICS_QUERY_MAX_EXECUTION_SECONDS} s per request",
        "memory": f"{memory / 2**20:,.0f} MiB per query" if memory >= 2**20 else f"{memory:,} bytes per query",
    }
    return ApplicationError(
        f"the query was stopped by the {kind} limit of metrics queries ({limits.get(kind, 'server setting')}): "
        "narrow the range, use a coarser interval, fewer groupBy or more filters",
        code="query_too_expensive",
        status_code=422,
    )


def query_execute(built: query.BuiltQuery, *, deadline: float | None = None) -> list[tuple[Any, ...]]:
    """Run one query under :func:`query_limits`; map its failures to answers a client can act on.

    A query stopped by a limit is a 422 ``query_too_expensive``, not a 503: the same question
    would cost the same again, so a client retrying it (as it may on a 503) only adds load; the
    fix is a narrower question. An unreachable ClickHouse is a 503 with ``Retry-After``.
    """
    if not tracing.ENABLED:
        return _query_run(built, deadline=deadline)
    with tracing.tracer.start_as_current_span(
        f"SELECT {built.table}",
        kind=SpanKind.CLIENT,
        attributes={
            "db.system.name": "clickhouse",
            "db.operation.name": "SELECT",
            "db.collection.name": built.table,
            # The statement with its %(name)s placeholders: its shape, never the bound values.
            "db.query.text": built.sql,
            "analytics.from_rollup": built.from_rollup,
        },
        record_exception=False,
    ) as span:
        try:
            rows = _query_run(built, deadline=deadline)
        except ApplicationError as exc:
            span.set_status(Status(StatusCode.ERROR, exc.code))
            span.set_attribute("error.type", exc.code)
            raise
        span.set_attribute("db.response.returned_rows", len(rows))
        return rows


def _query_run(built: query.BuiltQuery, *, deadline: float | None) -> list[tuple[Any, ...]]:
    limits = query_limits(deadline=deadline)
    if limits["max_execution_time"] <= 0 and settings.METRICS_QUERY_MAX_EXECUTION_SECONDS > 0:
        raise _too_expensive("time")  # the request's earlier queries spent its budget
    try:
        rows: list[tuple[Any, ...]] = _client().execute(built.sql, built.params, settings=limits)
    except ServerException as exc:
        kind = _LIMIT_CODES.get(exc.code)
        if exc.code == _TOO_MANY_ROWS and built.fallback is not None:
            # The plan's own guard (query.sql.ONE_SCAN_MAX_GROUP_ROWS): more groups than its plan
            # is for; the fallback answers the same question within the request's limits.
            logger.info("metrics query over its plan's group guard on %s: running its fallback", built.table)
            return _query_run(built.fallback, deadline=deadline)
        if exc.code == _TOO_MANY_SIMULTANEOUS_QUERIES:
            raise _unavailable("the metrics store is busy, retry shortly") from exc
        if kind is None:
            raise
        logger.warning("metrics query stopped by its %s limit (Code %s) on %s", kind, exc.code, built.table)
        raise _too_expensive(kind) from exc
    except (NetworkError, SocketTimeoutError, EOFError, OSError) as exc:
        _client_drop()  # the connection is in an unknown state: reconnect next time
        logger.warning("metrics query failed: ClickHouse unreachable: %r", exc)
        raise _unavailable("the metrics store is unavailable, retry shortly") from exc
    return rows


def _unavailable(message: str) -> ApplicationError:
    return ApplicationError(message, code="clickhouse_unavailable", status_code=503, headers={"Retry-After": "5"})


def request_bounds() -> bounds.Bounds:
    """The caps of a metric question, from settings (see ``metrics.bounds``)."""
    return bounds.Bounds(
        max_buckets={
            "minute": settings.METRICS_MAX_MINUTE_BUCKETS,
            "hour": settings.METRICS_MAX_HOUR_BUCKETS,
            "day": settings.METRICS_MAX_DAY_BUCKETS,
        },
        max_grouped_points=settings.METRICS_MAX_GROUPED_POINTS,
        max_high_cardinality_days=settings.METRICS_MAX_HIGH_CARDINALITY_RANGE_DAYS,
    )


def metric_definitions_get(*, names: Sequence[str]) -> list[query.CompiledMetric]:
    """Compiled definitions in the order asked; an unknown name is a 400 naming ``metric``."""
    found = {d.name: d for d in MetricDefinition.objects.filter(name__in=set(names))}
    compiled = []
    for name in names:
        definition = found.get(name)
        if definition is None:
            raise ApplicationError(f"unknown metric {name!r}", code="unknown_metric", field="metric")
        try:
            compiled.append(definition.compile())
        except query.QueryError as exc:
            raise ApplicationError(
                f"metric {name!r} does not compile: {exc.message}", code="invalid_metric", field="metric"
            ) from exc
    return compiled


def _cache_key(payload: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return f"metrics:query:{digest}"


class MetricResult(TypedDict):
    metric: str
    unit: str
    series: list[query.Series]


#: The body of ``GET /metrics`` (``apis.MetricsQueryApi.OutputSerializer`` documents it, and the
#: tests check real answers against that serializer). "from" is a keyword: the functional form.
MetricsResult = TypedDict(
    "MetricsResult", {"from": str, "to": str, "interval": str | None, "metrics": list[MetricResult]}
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Question(TypedDict, total=False):
    """The keyword arguments of :func:`metric_answer`, for the two entry points that forward them."""

    metrics: Required[Sequence[str]]
    start: datetime | None
    end: datetime | None
    interval: str | None
    group_by: Sequence[str]
    filters: Sequence[tuple[str, str]]
    limit: int
    use_cache: bool
    definitions: Sequence[query.CompiledMetric]


def metric_timeseries_get(**question: Unpack[Question]) -> MetricsResult:
    """The body of ``GET /metrics`` as data (dashboards, admin preview); arguments as :func:`metric_answer`."""
    return metric_timeseries_get_many([question])[0]


def metric_timeseries_get_many(questions: Sequence[Question]) -> list[MetricsResult]:
    """The bodies of several questions of one page, in order, their queries run side by side.

    A page's questions are independent, so asking them one after another cost the sum of their
    slowest queries; here all their queries share the pool at once (see :func:`metric_answers`).
    """
    bodies = []
    for body, rendered in metric_answers(questions):
        if body is None:
            assert rendered is not None
            cached: MetricsResult = orjson.loads(rendered)
            bodies.append(cached)
        else:
            bodies.append(body)
    return bodies


def metric_timeseries_json(**question: Unpack[Question]) -> bytes:
    """The body of ``GET /metrics`` rendered as JSON: a cached answer is returned as it was stored."""
    body, rendered = metric_answer(**question)
    return rendered if rendered is not None else orjson.dumps(body)


@dataclass(frozen=True)
class _Prepared:
    """A question validated and built, with its cache entry's key and, on a hit, the stored answer."""

    compiled: list[query.CompiledMetric]
    request: query.MetricRequest
    built: list[query.BuiltQuery]
    interval: str | None
    key: str
    caching: bool
    hit: bytes | None


def metric_answer(**question: Unpack[Question]) -> tuple[MetricsResult | None, bytes | None]:
    """The body of ``GET /metrics``: each metric's series over [start, end), UTC buckets; as data
    and, when it came from or went to the cache, rendered (one of the two is None).

    ``definitions`` answers for compiled definitions instead of stored ones (the admin's preview
    of a definition being edited, before it is saved); ``metrics`` is then ignored.

    Identical questions within ``METRICS_QUERY_CACHE_SECONDS`` are answered from the cache. The key
    is the normalized question (resolved range, sorted filters, de-duplicated groupBy, the
    definitions' contents), so editing a definition in the admin takes effect at once. The cache
    holds the rendered JSON, not the data: pickling a day of minutes for two metrics took longer
    than the orjson rendering the API needs anyway, and a hit is then returned without any work.
    """
    return metric_answers([question])[0]


def metric_answers(questions: Sequence[Question]) -> list[tuple[MetricsResult | None, bytes | None]]:
    """:func:`metric_answer` for several questions at once, answers in the order asked.

    Every question is validated (and looked up in the cache) before any query runs, so an invalid
    one fails the batch with its own error and costs ClickHouse nothing, as it did alone. The
    queries of all the questions the cache did not answer go to the pool in one ``map``, never one
    submission per question from inside the pool: a pool thread waiting on work queued behind it
    in the same bounded pool would deadlock. They share one time budget, the batch's: a page is one
    request. A query that fails fails the batch with its own error (the first in question order).
    """
    prepared = [_question_prepare(**question) for question in questions]
    pending = [p for p in prepared if p.hit is None]
    results = iter(_queries_run([built for p in pending for built in p.built]))
    answers: list[tuple[MetricsResult | None, bytes | None]] = []
    for p in prepared:
        if p.hit is not None:
            answers.append((None, p.hit))
        else:
            answers.append(_answer_assemble(p, [next(results) for _ in p.built]))
    return answers


def _question_prepare(
    *,
    metrics: Sequence[str],
    start: datetime | None = None,
    end: datetime | None = None,
    interval: str | None = None,
    group_by: Sequence[str] = (),
    filters: Sequence[tuple[str, str]] = (),
    limit: int = 100,
    use_cache: bool = True,
    definitions: Sequence[query.CompiledMetric] = (),
) -> _Prepared:
    if not metrics and not definitions:
        raise ApplicationError("at least one metric is required", code="required", field="metric")
    compiled = list(definitions) or metric_definitions_get(names=metrics)
    # A default end is the next whole minute: everything received so far is inside, the range is
    # aligned so rollups answer it, and identical default queries share a cache entry for a minute.
    now = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    try:
        start, end = bounds.range_resolve(start=start, end=end, now=now)
    except query.QueryError as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", field=exc.field) from exc
    request = query.MetricRequest(
        start=start,
        end=end,
        interval=interval,
        group_by=tuple(dict.fromkeys(group_by)),
        filters=tuple(sorted(set(filters))),
        limit=limit,
        now=now,
    )
    try:
        # The request's bounds here, each metric's dimensions in queries_build: every rule checked once.
        bounds.request_check(request, request_bounds())
        built = query.queries_build(compiled, request)
    except query.QueryError as exc:
        raise ApplicationError(exc.message, code="invalid_parameter", field=exc.field) from exc

    key = _cache_key(
        {
            "metrics": [(m.name, m.spec) for m in compiled],
            "range": (_iso(start), _iso(end)),
            "interval": interval,
            "group_by": request.group_by,
            "filters": request.filters,
            "limit": limit,
        }
    )
    caching = use_cache and settings.METRICS_QUERY_CACHE_SECONDS > 0
    hit = cache.get(key) if caching else None
    # Anything but bytes (an entry of an older release) is a miss.
    return _Prepared(compiled, request, built, interval, key, caching, hit if isinstance(hit, bytes) else None)


def _queries_run(built: list[query.BuiltQuery]) -> list[list[tuple[Any, ...]]]:
    """The rows of each query, in order, under one deadline; side by side on the pool when several."""
    deadline = time.monotonic() + settings.METRICS_QUERY_MAX_EXECUTION_SECONDS
    if len(built) <= 1 or threading.current_thread().name.startswith(_POOL_PREFIX):
        # One query needs no thread; a caller already on a pool thread must not wait on the pool.
        return [query_execute(one, deadline=deadline) for one in built]
    # The pool's threads do not inherit this thread's context: each query span joins the request's trace.
    ctx = otel_context.get_current()

    def run(one: query.BuiltQuery) -> list[tuple[Any, ...]]:
        with tracing.context_attached(ctx):
            return query_execute(one, deadline=deadline)

    return list(_pool.map(run, built))


def _answer_assemble(p: _Prepared, results: list[list[tuple[Any, ...]]]) -> tuple[MetricsResult | None, bytes | None]:
    request = p.request
    body: MetricsResult = {"from": _iso(request.start), "to": _iso(request.end), "interval": p.interval, "metrics": []}
    # A query answers the metrics it fused (its members), each from its own value column.
    answered = {
        position: (rows, member)
        for built, rows in zip(p.built, results, strict=True)
        for member, position in enumerate(built.members)
    }
    for position, metric in enumerate(p.compiled):
        rows, member = answered[position]
        body["metrics"].append(
            {
                "metric": metric.name,
                "unit": metric.spec.unit,
                "series": query.series_assemble(metric, request, rows, member),
            }
        )
    if p.caching:
        rendered = orjson.dumps(body)
        cache.set(p.key, rendered, settings.METRICS_QUERY_CACHE_SECONDS)
        return body, rendered
    return body, None


def ingestion_lag_get(*, window: timedelta = timedelta(minutes=15)) -> dict[str, Any]:
    """Seconds between now and the newest event received in ``window`` (None when nothing came)."""
    now = datetime.now(UTC)
    rows = query_execute(query.ingestion_lag_build(since=now - window))
    newest_received_ms, newest_ts_ms, count = rows[0] if rows else (0, 0, 0)
    if not count:
        return {"now": _iso(now), "events": 0, "lag_seconds": None, "newest_received_at": None}
    newest = datetime.fromtimestamp(newest_received_ms / 1000, UTC)
    return {
        "now": _iso(now),
        "events": int(count),
        "lag_seconds": max(0.0, (now - newest).total_seconds()),
        "newest_received_at": _iso(newest),
        "newest_event_at": _iso(datetime.fromtimestamp(newest_ts_ms / 1000, UTC)),
    }
