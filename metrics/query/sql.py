"""SQL rendering: a question's compiled metrics and its request -> parameterized queries (``queries_build``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from metrics.query.definitions import CompiledMetric, _Target
from metrics.query.planner import BuiltQuery, MetricRequest, _epoch_ms, _in_range, _targets, request_validate
from metrics.query.registry import SOURCES
from metrics.query.vocabulary import HIGH_CARDINALITY_DIMENSIONS, INTERVALS, QueryError

# --- SQL rendering ----------------------------------------------------------------------------


def query_build(metric: CompiledMetric, request: MetricRequest) -> BuiltQuery:
    """SQL for one metric (:func:`queries_build` of a question of one metric)."""
    return queries_build([metric], request)[0]


def queries_build(metrics: Sequence[CompiledMetric], request: MetricRequest) -> list[BuiltQuery]:
    """The queries of one question: a row per (group, bucket) plus a total row per group.

    Each metric is planned on its own (``_targets``: its cheapest table); metrics whose tables are
    the same place (the same rollup, raw table or union of rollup and edges, and the same event
    types) are one query, one scan for them all: a dashboard row of four QoE metrics reads its
    rows once, not four times side by side. A query's ``members`` are its metrics' positions.

    Result columns: ``m_g0..m_gN`` (group values), ``m_bucket`` (epoch seconds, 0 on total rows),
    ``m_total`` (1 on the per-group total row) and ``m_value0..`` (one per member). The ``m_``
    prefix matters: ClickHouse resolves aliases in WHERE, so an alias equal to a column name
    (``bucket`` of the rollups) would silently replace that column in the range filter.
    With an interval, ``GROUPING SETS`` computes bucket rows and per-group totals in one scan, so
    totals of distinct counts and quantiles are exact (not sums of buckets). With a group-by the
    answer holds the ``limit`` largest groups by total of each member (``_ranked``), chosen in one
    of two ways (``_top_groups``); ``series_assemble`` keeps each metric's own.
    """
    places: dict[tuple[Any, ...], list[tuple[int, CompiledMetric, _Target]]] = {}
    for position, metric in enumerate(metrics):
        request_validate(metric, request)
        target = next((t for t in _targets(metric, request) if t.value(metric, {}) is not None), None)
        if target is None:
            raise QueryError(f"metric {metric.name!r} cannot be answered from its source", field="metric")
        places.setdefault((target.place, metric.spec.event_types), []).append((position, metric, target))
    built = []
    for members in places.values():
        target = members[0][2].merged([t for _, _, t in members[1:]])
        params = target.params
        values = []
        for slot, (_, metric, _) in enumerate(members):
            value = target.value(metric, params, slot)
            assert value is not None  # every member answers on its own target, which this one reads
            values.append(value)
        built.append(
            _render(
                members[0][1],
                request,
                target=target,
                values=values,
                params=params,
                members=tuple(p for p, _, _ in members),
            )
        )
    return built


def _render(
    metric: CompiledMetric,
    request: MetricRequest,
    *,
    target: _Target,
    values: list[str],
    params: dict[str, Any],
    members: tuple[int, ...],
) -> BuiltQuery:
    time_col = target.time_column
    params["start_ms"] = _epoch_ms(request.start)
    params["end_ms"] = _epoch_ms(request.end)
    where = [_in_range(time_col, "start_ms", "end_ms")]
    dims = target.dimensions
    if metric.spec.event_types:  # the members' own: they share them
        params["event_types"] = list(metric.spec.event_types)
        where.append(f"{dims['type']} IN %(event_types)s")
    for i, (dim, filtered) in enumerate(sorted(request.filter_values().items())):
        params[f"f{i}"] = filtered
        where.append(f"{dims[dim]} IN %(f{i})s")

    group_cols = [f"{dims[dim]} AS m_g{i}" for i, dim in enumerate(request.group_by)]
    group_keys = [f"m_g{i}" for i in range(len(request.group_by))]
    keys = ", ".join(group_keys)
    where_sql = " AND ".join(where)
    value_cols = [f"{value} AS m_value{j}" for j, value in enumerate(values)]
    outputs = ", ".join(f"m_value{j}" for j in range(len(values)))

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
            members=members,
            **plan,
        )

    if request.interval is not None:
        unit = INTERVALS[request.interval][1]
        select = [
            *group_cols,
            f"toUnixTimestamp(toStartOfInterval({time_col}, INTERVAL 1 {unit}, 'UTC')) AS m_bucket",
            "grouping(m_bucket) AS m_total",
            *value_cols,
        ]
        sets = f"({', '.join([*group_keys, 'm_bucket'])}), ({keys})"

        def series(where: str, order: str = " ORDER BY m_total, m_bucket") -> str:
            return (
                f"SELECT {', '.join(select)} FROM {target.table} WHERE {where} "  # noqa: S608 - see module doc
                f"GROUP BY GROUPING SETS ({sets}){order}"
            )

        if not group_keys:
            return built(series(where_sql))
        top = (
            f"SELECT {keys} FROM (SELECT {', '.join(group_cols)}, {_ranks(values, keys)} "  # noqa: S608 - see module doc
            f"FROM {target.table} WHERE {where_sql} GROUP BY {keys}) WHERE {_ranked(len(values))}"
        )
        key_tuple = f"({', '.join(dims[d] for d in request.group_by)})"
        narrowed = built(series(f"{where_sql} AND {key_tuple} IN ({top})"))
        if HIGH_CARDINALITY_DIMENSIONS.intersection(request.group_by):
            return narrowed
        return built(_top_groups(series(where_sql, order=""), keys, len(values)), fallback=narrowed)
    if group_keys:
        sql = (
            f"SELECT {keys}, 0 AS m_bucket, 1 AS m_total, {outputs} FROM (SELECT {', '.join(group_cols)}, "  # noqa: S608
            f"{', '.join(value_cols)}, {_ranks(values, keys)} FROM {target.table} WHERE {where_sql} GROUP BY {keys}) "
            f"WHERE {_ranked(len(values))}"
        )
    else:
        sql = (
            f"SELECT 0 AS m_bucket, 1 AS m_total, {', '.join(value_cols)} "  # noqa: S608 - see module doc
            f"FROM {target.table} WHERE {where_sql}"
        )
    return built(sql)


def _ranks(tops: Sequence[str], keys: str) -> str:
    """Each group's rank by each member's total (largest first, then by the group's values, the
    order ``series_assemble`` ranks them in), as columns ``m_r0..`` of a query grouped by ``keys``."""
    return ", ".join(
        f"row_number() OVER (ORDER BY {top} DESC NULLS LAST, {keys}) AS m_r{j}" for j, top in enumerate(tops)
    )


def _ranked(members: int) -> str:
    """The one rule of the groups a grouped query keeps: those in the ``limit`` largest of any member."""
    return " OR ".join(f"m_r{j} <= %(limit)s" for j in range(members))


#: The guard of the one-scan top-N: (group, bucket) rows its aggregation may hold before the
#: server stops it and the narrowed plan runs instead. Dimensions outside
#: HIGH_CARDINALITY_DIMENSIONS have a handful of values from real players (7 countries x 720 hours
#: is 5,040 rows), but they are client strings: a sender inventing values must cost a retry, not
#: the server's memory.
ONE_SCAN_MAX_GROUP_ROWS = 200_000


def _top_groups(series: str, keys: str, members: int) -> str:
    """The groups of an interval series in the ``limit`` largest of any member, read in the
    series' one scan.

    The other plan (the ``fallback``) first finds the top groups in a scan of their totals, then
    aggregates the series of those groups only: two scans, but its aggregation holds ``limit``
    groups per member. Measured at 10M events (bench_metrics, with a window-function form of one
    scan over rows): one scan is faster when groups x buckets is small (unique viewers by country
    over 585 hours, 56-88 -> 38-40 ms; events by country over a week, 24 -> 14 ms) and slower for
    videos over many hours (23-29 -> 58-73 ms over 720 hours), whose groups are many; hence one
    scan only without a high-cardinality dimension. This form ranks groups, not rows: each group's
    rows are gathered into an array beside its totals (the row with ``m_total = 1``), the groups
    ranked as the narrowing query ranks them, and the arrays of those kept unrolled again.
    """
    values = ", ".join(f"m_value{j}" for j in range(members))
    unrolled = ", ".join(f"tupleElement(m_row, {3 + j}) AS m_value{j}" for j in range(members))
    tops = [f"anyIf(m_value{j}, m_total = 1)" for j in range(members)]
    return (
        f"SELECT {keys}, tupleElement(m_row, 1) AS m_bucket, tupleElement(m_row, 2) AS m_total, {unrolled} "  # noqa: S608
        f"FROM (SELECT {keys}, m_rows FROM (SELECT {keys}, groupArray((m_bucket, m_total, {values})) AS m_rows, "
        f"{_ranks(tops, keys)} FROM ({series}) GROUP BY {keys}) WHERE {_ranked(members)}) ARRAY JOIN m_rows AS m_row "
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
