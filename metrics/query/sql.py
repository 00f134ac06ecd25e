"""SQL rendering: a compiled metric and a request -> one parameterized query (``query_build``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from metrics.query.definitions import CompiledMetric, _Target
from metrics.query.planner import BuiltQuery, MetricRequest, _epoch_ms, _in_range, _targets, request_validate
from metrics.query.registry import SOURCES
from metrics.query.vocabulary import INTERVALS, QueryError

# --- SQL rendering ----------------------------------------------------------------------------


def query_build(metric: CompiledMetric, request: MetricRequest) -> BuiltQuery:
    """SQL for one metric: a row per (group, bucket) plus a total row per group.

    Result columns: ``m_g0..m_gN`` (group values), ``m_bucket`` (epoch seconds, 0 on total rows),
    ``m_total`` (1 on the per-group total row) and ``m_value``. The ``m_`` prefix matters:
    ClickHouse resolves aliases in WHERE, so an alias equal to a column name (``bucket`` of the
    rollups) would silently replace that column in the range filter.
    With an interval, ``GROUPING SETS`` computes bucket rows and per-group totals in one scan, so
    totals of distinct counts and quantiles are exact (not sums of buckets). With a group-by the
    groups are first narrowed to the ``limit`` largest by total.
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
        keys = ", ".join(group_keys)
        top = (
            f"SELECT {', '.join(group_cols)} FROM {target.table} WHERE {where_sql} "  # noqa: S608 - see module doc
            f"GROUP BY {keys} ORDER BY {value} DESC NULLS LAST, {keys} LIMIT %(limit)s"
        )
        key_tuple = f"({', '.join(dims[d] for d in request.group_by)})"
        if request.interval is not None:
            where_sql += f" AND {key_tuple} IN ({top})"

    select = [*group_cols]
    if request.interval is not None:
        unit = INTERVALS[request.interval][1]
        select.append(f"toUnixTimestamp(toStartOfInterval({time_col}, INTERVAL 1 {unit}, 'UTC')) AS m_bucket")
        select.append("grouping(m_bucket) AS m_total")
        select.append(f"{value} AS m_value")
        sets = f"({', '.join([*group_keys, 'm_bucket'])}), ({', '.join(group_keys)})"
        sql = (
            f"SELECT {', '.join(select)} FROM {target.table} WHERE {where_sql} "  # noqa: S608 - see module doc
            f"GROUP BY GROUPING SETS ({sets}) ORDER BY m_total, m_bucket"
        )
    elif group_keys:
        select += ["0 AS m_bucket", "1 AS m_total", f"{value} AS m_value"]
        keys = ", ".join(group_keys)
        sql = (
            f"SELECT {', '.join(select)} FROM {target.table} WHERE {where_sql} "  # noqa: S608 - see module doc
            f"GROUP BY {keys} ORDER BY m_value DESC NULLS LAST, {keys} LIMIT %(limit)s"
        )
    else:
        select += ["0 AS m_bucket", "1 AS m_total", f"{value} AS m_value"]
        sql = f"SELECT {', '.join(select)} FROM {target.table} WHERE {where_sql}"  # noqa: S608 - see module doc
    return BuiltQuery(
        sql=sql,
        params=params,
        table=target.table,
        from_rollup=target.rollup is not None,
        group_by=request.group_by,
        has_interval=request.interval is not None,
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
