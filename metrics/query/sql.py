"""SQL rendering: a compiled metric and a request -> one parameterized query (``query_build``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from metrics.query.definitions import CompiledMetric, _Target
from metrics.query.planner import BuiltQuery, MetricRequest, _epoch_ms, _in_range, _targets, request_validate
from metrics.query.registry import SOURCES
from metrics.query.vocabulary import HIGH_CARDINALITY_DIMENSIONS, INTERVALS, QueryError

# --- SQL rendering ----------------------------------------------------------------------------


def query_build(metric: CompiledMetric, request: MetricRequest) -> BuiltQuery:
    """SQL for one metric: a row per (group, bucket) plus a total row per group.

    Result columns: ``m_g0..m_gN`` (group values), ``m_bucket`` (epoch seconds, 0 on total rows),
    ``m_total`` (1 on the per-group total row) and ``m_value``. The ``m_`` prefix matters:
    ClickHouse resolves aliases in WHERE, so an alias equal to a column name (``bucket`` of the
    rollups) would silently replace that column in the range filter.
    With an interval, ``GROUPING SETS`` computes bucket rows and per-group totals in one scan, so
    totals of distinct counts and quantiles are exact (not sums of buckets). With a group-by the
    answer keeps the ``limit`` largest groups by total, chosen in one of two ways (``_top_groups``).
    """
    request_validate(metric, request)
    for target in _targets(metric, request):
        params = target.params
        value = target.value(metric, params)
        if value is None:
            continue
        return _render(metric, request, target, value, params)
    raise QueryError(f"metric {metric.name!r} cannot be answered from its source", field="metric")


def _render(
    metric: CompiledMetric, request: MetricRequest, target: _Target, value: str, params: dict[str, Any]
) -> BuiltQuery:
    time_col = target.time_column
    params["start_ms"] = _epoch_ms(request.start)
    params["end_ms"] = _epoch_ms(request.end)
    where = [_in_range(time_col, "start_ms", "end_ms")]
    dims = target.dimensions
    if metric.spec.event_types:
        params["event_types"] = list(metric.spec.event_types)
        where.append(f"{dims['type']} IN %(event_types)s")
    for i, (dim, values) in enumerate(sorted(request.filter_values().items())):
        params[f"f{i}"] = values
        where.append(f"{dims[dim]} IN %(f{i})s")

    group_cols = [f"{dims[dim]} AS m_g{i}" for i, dim in enumerate(request.group_by)]
    group_keys = [f"m_g{i}" for i in range(len(request.group_by))]
    where_sql = " AND ".join(where)

    if group_keys:
        params["limit"] = request.limit

    def built(sql: str, **plan: Any) -> BuiltQuery:
        return BuiltQuery(
            sql=sql,
            params=params,
            table=target.table,
            from_rollup=target.rollup is not None,
            group_by=request.group_by,
            has_interval=request.interval is not None,
            **plan,
        )

    select = [*group_cols]
    if request.interval is not None:
        unit = INTERVALS[request.interval][1]
        select.append(f"toUnixTimestamp(toStartOfInterval({time_col}, INTERVAL 1 {unit}, 'UTC')) AS m_bucket")
        select.append("grouping(m_bucket) AS m_total")
        select.append(f"{value} AS m_value")
        sets = f"({', '.join([*group_keys, 'm_bucket'])}), ({', '.join(group_keys)})"

        def series(where: str, order: str = " ORDER BY m_total, m_bucket") -> str:
            return (
                f"SELECT {', '.join(select)} FROM {target.table} WHERE {where} "  # noqa: S608 - see module doc
                f"GROUP BY GROUPING SETS ({sets}){order}"
            )

        if not group_keys:
            return built(series(where_sql))
        keys = ", ".join(group_keys)
        top = (
            f"SELECT {', '.join(group_cols)} FROM {target.table} WHERE {where_sql} "  # noqa: S608 - see module doc
            f"GROUP BY {keys} ORDER BY {value} DESC NULLS LAST, {keys} LIMIT %(limit)s"
        )
        key_tuple = f"({', '.join(dims[d] for d in request.group_by)})"
        narrowed = built(series(f"{where_sql} AND {key_tuple} IN ({top})"))
        if HIGH_CARDINALITY_DIMENSIONS.intersection(request.group_by):
            return narrowed
        return built(_top_groups(series(where_sql, order=""), keys), fallback=narrowed)
    if group_keys:
        select += ["0 AS m_bucket", "1 AS m_total", f"{value} AS m_value"]
        keys = ", ".join(group_keys)
        sql = (
            f"SELECT {', '.join(select)} FROM {target.table} WHERE {where_sql} "  # noqa: S608 - see module doc
            f"GROUP BY {keys} ORDER BY m_value DESC NULLS LAST, {keys} LIMIT %(limit)s"
        )
    else:
        select += ["0 AS m_bucket", "1 AS m_total", f"{value} AS m_value"]
        sql = f"SELECT {', '.join(select)} FROM {target.table} WHERE {where_sql}"  # noqa: S608 - see module doc
    return built(sql)


#: The guard of the one-scan top-N: (group, bucket) rows its aggregation may hold before the
#: server stops it and the narrowed plan runs instead. Dimensions outside
#: HIGH_CARDINALITY_DIMENSIONS have a handful of values from real players (7 countries x 720 hours
#: is 5,040 rows), but they are client strings: a sender inventing values must cost a retry, not
#: the server's memory.
ONE_SCAN_MAX_GROUP_ROWS = 200_000


def _top_groups(series: str, keys: str) -> str:
    """The ``limit`` largest groups of an interval series, read in the series' one scan.

    The other plan (the ``fallback``) first finds the top groups in a scan of their totals, then
    aggregates the series of those groups only: two scans, but its aggregation holds ``limit``
    groups. Measured at 10M events (bench_metrics, with a window-function form of one scan): one
    scan is faster when groups x buckets is small (unique viewers by country over 585 hours, 56-88
    -> 38-40 ms; events by country over a week, 24 -> 14 ms) and slower for videos over many hours
    (23-29 -> 58-73 ms over 720 hours), whose groups are many; hence one scan only without a
    high-cardinality dimension. This form sorts groups, not rows, which the window form did. Here each
    group's rows are gathered into an array beside its total (the row with ``m_total = 1``), the
    groups ordered as the narrowing query orders them, and the arrays unrolled again.
    """
    return (
        f"SELECT {keys}, tupleElement(m_row, 1) AS m_bucket, tupleElement(m_row, 2) AS m_total, "  # noqa: S608
        f"tupleElement(m_row, 3) AS m_value FROM (SELECT {keys}, anyIf(m_value, m_total = 1) AS m_top, "
        f"groupArray((m_bucket, m_total, m_value)) AS m_rows FROM ({series}) GROUP BY {keys} "
        f"ORDER BY m_top DESC NULLS LAST, {keys} LIMIT %(limit)s) ARRAY JOIN m_rows AS m_row "
        # In the statement, not the query's settings: a setting that changes between a request's
        # queries costs the embedded server a SET each time.
        f"ORDER BY m_total, m_bucket SETTINGS max_rows_to_group_by = {ONE_SCAN_MAX_GROUP_ROWS}, "
        "group_by_overflow_mode = 'throw'"
    )


# --- Ingestion lag ----------------------------------------------------------------------------


def ingestion_lag_build(*, since: datetime) -> BuiltQuery:
    """Freshness of the raw table: the newest receive time and event time stored since ``since``.

    The events table has no insertion-time column, so "now minus the newest ``received_at``" is the
    lag seen by a reader: an upper bound of the pipeline delay while traffic flows.
    """
    source = SOURCES["events"]
    sql = (
        "SELECT toUnixTimestamp64Milli(max(received_at)), toUnixTimestamp64Milli(max(ts)), count() "  # noqa: S608
        f"FROM {source.table} WHERE received_at >= fromUnixTimestamp64Milli(%(since_ms)s, 'UTC')"
    )
    return BuiltQuery(
        sql=sql,
        params={"since_ms": _epoch_ms(since)},
        table=source.table,
        from_rollup=False,
        group_by=(),
        has_interval=False,
    )
