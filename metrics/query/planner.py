"""Requests and the planner: which tables can answer a question, cheapest first (``_targets``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from metrics.query.definitions import CompiledMetric, _Target
from metrics.query.registry import ROLLUPS, Rollup, Source
from metrics.query.vocabulary import INTERVALS, QueryError

# --- Requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRequest:
    """One normalized question: a metric over [start, end) by interval, grouped and filtered."""

    start: datetime
    end: datetime
    interval: str | None = None
    group_by: tuple[str, ...] = ()
    filters: tuple[tuple[str, str], ...] = ()
    limit: int = 100
    #: The moment the question is asked at: the planner checks rollup TTLs against it, so one
    #: request reads the clock once (the selector's, which also resolved the default range).
    now: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    def filter_values(self) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {}
        for dim, value in self.filters:
            values.setdefault(dim, []).append(value)
        return values


@dataclass(frozen=True)
class BuiltQuery:
    """SQL with ``%(name)s`` placeholders, its parameters, and where it reads from."""

    sql: str
    params: dict[str, Any]
    table: str
    from_rollup: bool
    group_by: tuple[str, ...]
    has_interval: bool
    #: The same question planned another way, run when this plan's own guard (a ``SETTINGS``
    #: clause of its SQL) stops it.
    fallback: BuiltQuery | None = None
    #: The positions, in the question, of the metrics whose values are this query's
    #: ``m_value0..`` columns, in that order (``queries_build``).
    members: tuple[int, ...] = (0,)


def _epoch_ms(moment: datetime) -> int:
    return round(moment.astimezone(UTC).timestamp() * 1000)


def request_validate(metric: CompiledMetric, request: MetricRequest) -> None:
    """Reject what the definition does not allow (dimensions).

    The bounds of the request itself (dates, range, interval, limit) are checked once per request
    by ``metrics.bounds.request_check``, before any query is built.
    """
    for dim in request.group_by:
        if dim not in metric.dimensions:
            raise QueryError(f"metric {metric.name!r} cannot be grouped by {dim!r}", field="groupBy")
    for dim, _ in request.filters:
        if dim not in metric.dimensions:
            raise QueryError(f"metric {metric.name!r} cannot be filtered by {dim!r}", field="filter")


class _SplitTarget(_Target):
    """A coarse rollup for the whole coarse buckets inside the range; the edges from a finer
    rollup, or from the raw table when the range is not aligned on any rollup.

    A 30-day breakdown whose range ends on the hour reads 29 days from the per-day rollup and
    about a day of hours from the hourly one, instead of 720 hours; "the last 24 hours" to the
    second reads 23 whole hours from a rollup and two partial hours of raw rows. The parts hold the
    same sums under the same column names (raw rows are projected to them: a counted row is 1, a
    summed measure is its value where the flags hold), so the outer query aggregates their
    ``UNION ALL`` exactly like one table.
    """

    def __init__(
        self,
        *,
        source: Source,
        coarse: Rollup,
        fine: Rollup | None,
        dims: Sequence[str],
        columns: Sequence[tuple[str, str]],
        mid: tuple[int, int],
    ) -> None:
        super().__init__(source=source, rollup=coarse)
        self.fine = fine
        self.dims = dims
        self.columns = columns  # (rollup column, raw-row expression)
        self.mid = mid

    @property
    def time_column(self) -> str:
        return "bucket"

    @property
    def dimensions(self) -> Mapping[str, str]:
        assert self.rollup is not None
        return {dim: self.rollup.dimensions[dim] for dim in self.dims}

    @property
    def params(self) -> dict[str, Any]:
        return {"mid_start_ms": self.mid[0], "mid_end_ms": self.mid[1]}

    @property
    def place(self) -> tuple[Any, ...]:
        assert self.rollup is not None
        fine = self.fine.table if self.fine is not None else None
        return (self.source.key, self.rollup.table, fine, tuple(self.dims), self.mid)

    def merged(self, others: Sequence[_Target]) -> _Target:
        """The union reading every column that this and ``others`` read (each its own metric's)."""
        columns = dict(self.columns)
        for other in others:
            assert isinstance(other, _SplitTarget) and other.place == self.place
            columns.update(other.columns)
        assert self.rollup is not None
        return _SplitTarget(
            source=self.source,
            coarse=self.rollup,
            fine=self.fine,
            dims=self.dims,
            columns=list(columns.items()),
            mid=self.mid,
        )

    @property
    def table(self) -> str:
        assert self.rollup is not None
        coarse = self.rollup
        dims = [coarse.dimensions[d] for d in self.dims]
        t_c = coarse.time_column
        middle = ", ".join([f"{t_c} AS bucket", *dims, *(column for column, _ in self.columns)])
        if self.fine is not None:
            t_f, fine_table = self.fine.time_column, self.fine.table
            edge = ", ".join([f"{t_f} AS bucket", *dims, *(column for column, _ in self.columns)])
        else:
            t_f, fine_table = self.source.time_column, self.source.table
            edge = ", ".join([f"{t_f} AS bucket", *dims, *(f"{expr} AS {column}" for column, expr in self.columns)])
        return (
            f"(SELECT {middle} FROM {coarse.table} "  # noqa: S608 - see module doc
            f"WHERE {_in_range(t_c, 'mid_start_ms', 'mid_end_ms')} "
            f"UNION ALL SELECT {edge} FROM {fine_table} "
            f"WHERE ({_in_range(t_f, 'start_ms', 'mid_start_ms')}) OR ({_in_range(t_f, 'mid_end_ms', 'end_ms')}))"
        )


def _in_range(column: str, start_param: str, end_param: str) -> str:
    """The one time-range predicate: ``column`` in [start, end), both bound epoch milliseconds."""
    return (
        f"{column} >= fromUnixTimestamp64Milli(%({start_param})s, 'UTC') "
        f"AND {column} < fromUnixTimestamp64Milli(%({end_param})s, 'UTC')"
    )


def _rollup_columns(rollup: Rollup, metric: CompiledMetric) -> list[tuple[str, str]]:
    """The rollup columns the metric reads, each with the expression giving it for one raw row."""
    raw = _Target(source=metric.source)
    columns: list[tuple[str, str]] = []
    for term in metric.terms:
        flags = tuple(sorted(term.conditions))
        cond = raw.condition(flags)
        count, total = rollup.counts.get(flags), rollup.sums.get((term.measure, flags))
        measure = metric.source.measures.get(term.measure, "")
        if count and all(count != c for c, _ in columns):
            columns.append((count, f"toUInt64({cond})" if cond else "toUInt64(1)"))
        if total and all(total != c for c, _ in columns):
            columns.append((total, f"if({cond}, {measure}, 0)" if cond else measure))
    return columns


def _targets(metric: CompiledMetric, request: MetricRequest) -> list[_Target]:
    """Tables that can answer, cheapest first: rollups (alone, or a coarse one with a finer one
    for the range's edges) by expected rows read, then the raw table."""
    if metric.rollup is not None:
        return [_Target(source=metric.source, rollup=metric.rollup)]
    needed = set(request.group_by) | {dim for dim, _ in request.filters}
    if metric.spec.event_types:
        needed.add("type")
    start_ms, end_ms = _epoch_ms(request.start), _epoch_ms(request.end)
    now = request.now
    usable = []
    for registered in ROLLUPS.values():
        rollup = registered
        if rollup.base != metric.source.key:
            continue
        if request.interval is not None and INTERVALS[request.interval][0] % rollup.granularity:
            continue
        if not needed <= set(rollup.dimensions):
            continue
        if rollup.pivot is not None:
            one = needed & set(rollup.pivot.dimensions)
            if len(one) != 1:
                continue
            rollup = registered.pivoted(one.pop())
        # A day of margin: TTL drops whole partitions, possibly a little late, never early.
        if rollup.retention_days is not None and request.start < now - timedelta(days=rollup.retention_days - 1):
            continue
        if _Target(source=metric.source, rollup=rollup).value(metric, {}) is None:
            continue
        usable.append(rollup)

    def rows(rollup: Rollup, span_ms: int) -> int:
        """Expected rows read: buckets in the span times the rows a bucket holds."""
        return (span_ms // (rollup.granularity * 1000) + 1) * rollup.rows_per_bucket

    options: list[tuple[int, _Target]] = []
    for coarse in usable:
        grain_ms = coarse.granularity * 1000
        if not start_ms % grain_ms and not end_ms % grain_ms:
            options.append((rows(coarse, end_ms - start_ms), _Target(source=metric.source, rollup=coarse)))
            continue
        mid = (-(-start_ms // grain_ms) * grain_ms, end_ms // grain_ms * grain_ms)
        if mid[1] <= mid[0]:
            continue
        columns = _rollup_columns(coarse, metric)
        coarse_sql = _Target(source=metric.source, rollup=coarse).value(metric, {})
        edges_ms = (mid[0] - start_ms) + (end_ms - mid[1])
        # The fixed term keeps small ranges on one table: a union is not free.
        middle_cost = 1_000 + rows(coarse, mid[1] - mid[0])
        for fine in usable:
            fine_ms = fine.granularity * 1000
            if grain_ms % fine_ms or fine_ms == grain_ms or start_ms % fine_ms or end_ms % fine_ms:
                continue
            if _Target(source=metric.source, rollup=fine).value(metric, {}) != coarse_sql:
                continue
            if [c for c, _ in _rollup_columns(fine, metric)] != [c for c, _ in columns]:
                continue
            if any(coarse.dimensions[d] != fine.dimensions[d] for d in needed):
                continue
            split = _SplitTarget(
                source=metric.source, coarse=coarse, fine=fine, dims=sorted(needed), columns=columns, mid=mid
            )
            options.append((middle_cost + rows(fine, edges_ms), split))
        if all(coarse.dimensions[d] == metric.source.dimensions[d] for d in needed):
            split = _SplitTarget(
                source=metric.source, coarse=coarse, fine=None, dims=sorted(needed), columns=columns, mid=mid
            )
            options.append((middle_cost + edges_ms // 1000 * metric.source.rows_per_second, split))
    raw_cost = (end_ms - start_ms) // 1000 * metric.source.rows_per_second
    options.append((raw_cost, _Target(source=metric.source)))
    options.sort(key=lambda option: option[0])
    return [target for _, target in options]
