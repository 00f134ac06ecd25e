"""The one module that turns metric questions into ClickHouse SQL.

Everything a request or an admin form can influence ends up here, so this is where the two rules
of the metrics capability are enforced:

* identifiers (tables, columns, SQL functions) never come from input: a definition names a
  *source*, *measures*, *flags* and *dimensions* by key, and the keys are looked up in the
  registries below (code, reviewed like code). A definition that names anything else does not
  compile, and the admin refuses to save it;
* every value (time range, filter values, event types, quantile levels, limits) is a
  clickhouse-driver parameter (``%(name)s``), escaped by the driver, never formatted into SQL.

How a table is chosen (``_targets``): a rollup can answer when it aggregates the metric's source,
its grain divides the interval, it keeps every grouped/filtered dimension (and ``type`` for an
event-type filter), every aggregation of the metric is a sum of its columns (counts and sums, and
averages as sum/count; never distinct counts or quantiles) and its TTL covers the range. A range
aligned on the grain reads the rollup alone; otherwise the whole buckets inside the range come
from that rollup and the edges from a finer rollup aligned on them or, failing that, from the raw
rows (projected to the rollup's columns). Among the candidates, and the raw table, the one with
the fewest expected rows wins (``rows_per_bucket`` / ``rows_per_second`` hints). Every candidate
gives the same numbers: the tests check each built-in metric against Python-computed truth over
ranges that exercise every path.

It is pure (no Django, no connection; only the clock, for TTLs), so it can be tested on its own.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from analytics_platform import warehouse

# --- Vocabulary of the API -------------------------------------------------------------------

#: Interval name -> (seconds, ClickHouse interval unit). The unit is a keyword from this table.
INTERVALS: dict[str, tuple[int, str]] = {
    "minute": (60, "MINUTE"),
    "hour": (3600, "HOUR"),
    "day": (86400, "DAY"),
}

#: The dimensions of the public contract (camelCase, as on the wire).
DIMENSIONS: tuple[str, ...] = ("videoId", "country", "device", "os", "browser", "cdn", "player", "type")

AGGREGATIONS: tuple[str, ...] = ("count", "uniq", "sum", "avg", "quantile", "ratio")
#: Aggregations allowed as the numerator or denominator of a ratio.
RATIO_PARTS: tuple[str, ...] = ("count", "uniq", "sum")
#: Aggregations whose empty bucket means "nothing happened" (0); the others have no value (null).
ZERO_FILLED: frozenset[str] = frozenset({"count", "uniq", "sum"})

METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

MAX_LIMIT = 10_000


class QueryError(ValueError):
    """A definition or a request the builder cannot turn into SQL; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# --- Registries: the only identifiers that can reach SQL ---------------------------------------


@dataclass(frozen=True)
class Source:
    """A raw table a metric can be defined on.

    ``time_column`` places a row in a bucket (for view summaries: the view's start, as API.md
    asks). ``flags`` are named boolean SQL expressions over the table's columns, usable as
    conditions of an aggregation.
    """

    key: str
    label: str
    table: str
    time_column: str
    dimensions: Mapping[str, str]
    measures: Mapping[str, str]
    flags: Mapping[str, str] = field(default_factory=dict)
    type_column: str | None = None
    #: FINAL for tables whose rows are replaced (ReplacingMergeTree) until merges collapse them.
    final: bool = False
    #: Planner hint: rows per second of time range (relative to the rollups' ``rows_per_bucket``).
    rows_per_second: int = 1


@dataclass(frozen=True)
class Rollup:
    """A pre-aggregated table that can stand in for ``base`` when it answers the question.

    Rollups hold pre-computed sums, not rows, so the builder can only use one for aggregations it
    was built for: ``counts`` maps a (sorted) tuple of base flags to the column counting the rows
    where they hold (``()`` = every row), ``sums`` maps (measure, flags) to the column summing that
    measure over those rows. Averages are a sum over a count with the same flags. Distinct counts
    and quantiles are never answered from a rollup. Rows of a SummingMergeTree may not be merged
    yet, so every column is read through ``sum()``.
    """

    key: str
    label: str
    table: str
    base: str
    granularity: int
    time_column: str
    dimensions: Mapping[str, str]
    counts: Mapping[tuple[str, ...], str]
    sums: Mapping[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)
    #: The rollup's TTL: ranges starting further back are answered from the base table.
    retention_days: int | None = None
    #: Planner hint: rows per bucket to expect (the cardinality of the key's dimensions). The
    #: builder reads from the rollup with the fewest expected rows for the range.
    rows_per_bucket: int = 1
    #: Analysts may name it as a definition's source (otherwise only chosen automatically).
    selectable: bool = False


_EVENT_DIMENSIONS = {
    "videoId": "video_id",
    "country": "country",
    "device": "device",
    "os": "os",
    "browser": "browser",
    "cdn": "cdn",
    "player": "player",
    "type": "type",
}
_VIEW_DIMENSIONS = {k: v for k, v in _EVENT_DIMENSIONS.items() if k != "type"}

# Per-view QoE scores from 0 to 100 in the manner of Mux Data's (README "QoE scores" gives each
# formula and its source), as measures of the view summaries: the built-in definitions average
# them over views. A startup or smoothness score means something only for a view that started.
_PLAYBACK_SUCCESS = "if(playback_failure, 0, if(exit_before_start, 50, 100))"
# Mux's published startup curve: 8 / (8 + seconds); 95 at 400 ms, 80 at 2 s, 50 at 8 s.
_STARTUP = "100 * 8 / (8 + startup_time_ms / 1000)"
# Halved by 10 % of the watch time rebuffering, and again by two rebuffers per watched minute.
_SMOOTHNESS = (
    "100 / (1 + 10 * rebuffer_duration_ms / greatest(watch_time_ms, 1))"
    " / (1 + rebuffer_count * 30000 / greatest(watch_time_ms, 1))"
)
_VIEW_SCORES = {
    "playback_success_score": _PLAYBACK_SUCCESS,
    "startup_time_score": _STARTUP,
    "smoothness_score": _SMOOTHNESS,
    # Playback success weighs the mean of the others: a failed view scores 0 whatever its startup.
    "viewer_experience_score": (
        f"if(started, {_PLAYBACK_SUCCESS} * ({_STARTUP} + {_SMOOTHNESS}) / 200, {_PLAYBACK_SUCCESS})"
    ),
}

# Tables and columns of the streams schema (streams/models.py and its migrations).
SOURCES: dict[str, Source] = {
    "events": Source(
        key="events",
        label="Raw events",
        table=warehouse.EVENTS,
        time_column="ts",
        dimensions=_EVENT_DIMENSIONS,
        measures={
            "user_id": "user_id",
            "session_id": "session_id",
            "video_id": "video_id",
            "position_ms": "position_ms",
            "bitrate_kbps": "bitrate_kbps",
        },
        flags={"fatal": "fatal", "late": "late"},
        type_column="type",
        rows_per_second=1_000,
    ),
    "views": Source(
        key="views",
        label="View summaries (one row per closed view, bucketed at the view's start)",
        table=warehouse.VIEW_SUMMARIES,
        time_column="start_ts",
        dimensions=_VIEW_DIMENSIONS,
        measures={
            "user_id": "user_id",
            "session_id": "session_id",
            "video_id": "video_id",
            "watch_time_ms": "watch_time_ms",
            "startup_time_ms": "startup_time_ms",
            "rebuffer_count": "rebuffer_count",
            "rebuffer_duration_ms": "rebuffer_duration_ms",
            "error_count": "error_count",
            "fatal_error_count": "fatal_error_count",
            "max_position_ms": "max_position_ms",
            "completion": "completion",
            "event_count": "event_count",
            "watch_time_minutes": "watch_time_ms / 60000",
            **_VIEW_SCORES,
        },
        flags={
            "has_view_start": "has_view_start",
            "started": "started",
            "start_failure": "start_failure",
            "playback_failure": "playback_failure",
            "exit_before_start": "exit_before_start",
        },
        rows_per_second=30,
    ),
}


_VIEW_COUNTS: dict[tuple[str, ...], str] = {
    ("has_view_start",): "views",
    ("started",): "started_views",
    ("start_failure",): "start_failures",
    ("playback_failure",): "playback_failures",
    ("exit_before_start",): "exits_before_start",
}
_VIEW_SUMS: dict[tuple[str, tuple[str, ...]], str] = {
    ("watch_time_ms", ()): "watch_time_ms",
    ("rebuffer_duration_ms", ()): "rebuffer_duration_ms",
    ("rebuffer_count", ()): "rebuffer_count",
    ("startup_time_ms", ("started",)): "startup_time_ms_sum",
}
_GRAINS = {"minute": (60, warehouse.MINUTE_TTL_DAYS), "hour": (3600, warehouse.LONG_TTL_DAYS)}  # seconds, TTL days
# The rollup tables of each grain (analytics_platform/warehouse.py owns the names).
_GRAIN_TABLES = {
    "minute": (
        warehouse.EVENT_ROLLUP_MINUTE,
        warehouse.VIEW_ROLLUP_MINUTE,
        warehouse.METRICS_EVENT_TYPE_MINUTE,
        warehouse.METRICS_VIEW_MINUTE,
    ),
    "hour": (
        warehouse.EVENT_ROLLUP_HOUR,
        warehouse.VIEW_ROLLUP_HOUR,
        warehouse.METRICS_EVENT_TYPE_HOUR,
        warehouse.METRICS_VIEW_HOUR,
    ),
}
# Planner hints, in the units of Source.rows_per_second (1000 events/s, 30 views/s): rows per bucket
# of the rollups keyed by every dimension, which barely collapse the rows they aggregate.
_FULL_KEY_ROWS = {("events", 60): 20_000, ("events", 3600): 300_000, ("views", 60): 1_500, ("views", 3600): 60_000}


def _rollups() -> list[Rollup]:
    rollups = []
    for grain, (seconds, ttl) in _GRAINS.items():
        event_table, view_table, event_type_table, view_total_table = _GRAIN_TABLES[grain]
        rollups += [
            # streams: every dimension in the key (streams/migrations/0002_ttl_and_rollup_views.py)
            Rollup(
                key=f"event_rollup_{grain}",
                label=f"Event counts per {grain} and every dimension",
                table=event_table,
                base="events",
                granularity=seconds,
                time_column="bucket",
                dimensions=_EVENT_DIMENSIONS,
                counts={(): "events", ("late",): "late_events"},
                retention_days=ttl,
                rows_per_bucket=_FULL_KEY_ROWS["events", seconds],
            ),
            Rollup(
                key=f"view_rollup_{grain}",
                label=f"View QoE sums per {grain} of view start and every dimension",
                table=view_table,
                base="views",
                granularity=seconds,
                time_column="bucket",
                dimensions=_VIEW_DIMENSIONS,
                counts=_VIEW_COUNTS,
                sums=_VIEW_SUMS,
                retention_days=ttl,
                rows_per_bucket=_FULL_KEY_ROWS["views", seconds],
            ),
            # metrics: coarse keys for dashboard-sized questions (metrics/migrations/0003_...)
            Rollup(
                key=f"metrics_event_type_{grain}",
                label=f"Event counts per {grain} and type",
                table=event_type_table,
                base="events",
                granularity=seconds,
                time_column="bucket",
                dimensions={"type": "type"},
                counts={(): "events", ("late",): "late_events"},
                retention_days=ttl,
                rows_per_bucket=10,
            ),
            Rollup(
                key=f"metrics_view_{grain}",
                label=f"View QoE sums per {grain} of view start",
                table=view_total_table,
                base="views",
                granularity=seconds,
                time_column="bucket",
                dimensions={},
                counts=_VIEW_COUNTS,
                sums=_VIEW_SUMS,
                retention_days=ttl,
                rows_per_bucket=1,
            ),
        ]
    rollups.append(
        Rollup(
            key="metrics_view_video_day",
            label="View QoE sums per day of view start and video",
            table=warehouse.METRICS_VIEW_VIDEO_DAY,
            base="views",
            granularity=86400,
            time_column="bucket",
            dimensions={"videoId": "video_id"},
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=400,
            rows_per_bucket=1_000,
        )
    )
    return rollups


ROLLUPS: dict[str, Rollup] = {r.key: r for r in _rollups()}


def source_choices() -> list[tuple[str, str]]:
    """Sources an analyst can pick: the raw tables and the selectable rollups."""
    choices = [(s.key, s.label) for s in SOURCES.values()]
    choices += [(r.key, r.label) for r in ROLLUPS.values() if r.selectable]
    return choices


# --- Definitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One aggregation: ``aggregation(measure)`` over the rows where every condition holds."""

    aggregation: str
    measure: str = ""
    conditions: tuple[str, ...] = ()
    quantile: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric definition as plain data (the Django model converts itself to this)."""

    name: str
    source: str
    aggregation: str
    measure: str = ""
    quantile: float | None = None
    conditions: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    numerator_aggregation: str = ""
    denominator_aggregation: str = ""
    denominator_measure: str = ""
    denominator_conditions: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    unit: str = ""


@dataclass(frozen=True)
class CompiledMetric:
    """A definition checked against the registries, ready to be rendered on a table."""

    spec: MetricSpec
    source: Source  # the raw table (for a rollup-sourced definition: the rollup's base)
    rollup: Rollup | None  # set when the definition names a rollup as its source
    terms: tuple[Term, ...]  # one term, or numerator and denominator of a ratio
    dimensions: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def zero_filled(self) -> bool:
        return self.spec.aggregation in ZERO_FILLED


def _check_conditions(conditions: Sequence[str], flags: Mapping[str, str], *, field_name: str) -> None:
    for condition in conditions:
        name = condition[1:] if condition.startswith("!") else condition
        if name not in flags:
            raise QueryError(
                f"unknown condition {condition!r}; known: {', '.join(sorted(flags)) or 'none'}",
                field=field_name,
            )


def _check_term(term: Term, *, measures: Mapping[str, str], flags: Mapping[str, str], prefix: str) -> None:
    if term.aggregation == "count":
        if term.measure:
            raise QueryError("count takes no measure", field=f"{prefix}measure")
    elif term.measure not in measures:
        raise QueryError(
            f"{term.aggregation} needs a measure, one of: {', '.join(sorted(measures))}",
            field=f"{prefix}measure",
        )
    if term.aggregation == "quantile" and (term.quantile is None or not 0 < term.quantile < 1):
        raise QueryError("quantile needs a level strictly between 0 and 1", field="quantile")
    _check_conditions(term.conditions, flags, field_name=f"{prefix}conditions")


def metric_compile(spec: MetricSpec) -> CompiledMetric:
    """Check a definition against the registries; raise :class:`QueryError` naming the bad field.

    The admin calls this before saving, so every stored definition compiles; the API calls it
    again per request (cheap) because code, and with it the registries, may change after a save.
    """
    if not METRIC_NAME_RE.match(spec.name):
        raise QueryError("name must match ^[a-z][a-z0-9_]{0,63}$", field="name")
    source = SOURCES.get(spec.source)
    rollup = ROLLUPS.get(spec.source) if source is None else None
    if source is None and (rollup is None or not rollup.selectable):
        raise QueryError(f"unknown source {spec.source!r}", field="source")
    base = SOURCES[rollup.base] if rollup is not None else source
    assert base is not None
    measures, flags = base.measures, base.flags
    dimensions: Mapping[str, str] = rollup.dimensions if rollup is not None else base.dimensions
    if spec.aggregation not in AGGREGATIONS:
        raise QueryError(f"aggregation must be one of {', '.join(AGGREGATIONS)}", field="aggregation")

    if spec.aggregation == "ratio":
        if spec.numerator_aggregation not in RATIO_PARTS:
            raise QueryError(
                f"a ratio's numerator must be one of {', '.join(RATIO_PARTS)}", field="numerator_aggregation"
            )
        if spec.denominator_aggregation not in RATIO_PARTS:
            raise QueryError(
                f"a ratio's denominator must be one of {', '.join(RATIO_PARTS)}", field="denominator_aggregation"
            )
        terms: tuple[Term, ...] = (
            Term(spec.numerator_aggregation, spec.measure, tuple(spec.conditions)),
            Term(spec.denominator_aggregation, spec.denominator_measure, tuple(spec.denominator_conditions)),
        )
        _check_term(terms[0], measures=measures, flags=flags, prefix="")
        _check_term(terms[1], measures=measures, flags=flags, prefix="denominator_")
    else:
        if spec.numerator_aggregation or spec.denominator_aggregation or spec.denominator_measure:
            raise QueryError("numerator/denominator fields are only for ratios", field="denominator_aggregation")
        terms = (Term(spec.aggregation, spec.measure, tuple(spec.conditions), spec.quantile),)
        _check_term(terms[0], measures=measures, flags=flags, prefix="")

    if spec.event_types:
        if "type" not in dimensions:
            raise QueryError("this source has no event type to filter on", field="event_types")
        for event_type in spec.event_types:
            if not re.match(r"^[a-z][a-z0-9_.]{0,63}$", event_type):
                raise QueryError(f"invalid event type {event_type!r}", field="event_types")

    allowed = tuple(spec.dimensions) if spec.dimensions else tuple(d for d in DIMENSIONS if d in dimensions)
    for dim in allowed:
        if dim not in dimensions:
            raise QueryError(f"dimension {dim!r} is not available on source {spec.source!r}", field="dimensions")
    compiled = CompiledMetric(spec=spec, source=base, rollup=rollup, terms=terms, dimensions=allowed)
    if rollup is not None and _Target(source=base, rollup=rollup).value(compiled, {}) is None:
        raise QueryError(f"rollup {rollup.key!r} cannot compute this aggregation", field="aggregation")
    return compiled


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


class _Target:
    """A table a compiled metric can be rendered on: its raw source or one of its rollups."""

    def __init__(self, *, source: Source, rollup: Rollup | None = None) -> None:
        self.source = source
        self.rollup = rollup

    @property
    def table(self) -> str:
        if self.rollup is not None:
            return self.rollup.table
        return self.source.table + (" FINAL" if self.source.final else "")

    @property
    def time_column(self) -> str:
        return self.rollup.time_column if self.rollup is not None else self.source.time_column

    @property
    def dimensions(self) -> Mapping[str, str]:
        return self.rollup.dimensions if self.rollup is not None else self.source.dimensions

    @property
    def params(self) -> dict[str, Any]:
        """Parameters ``table`` refers to (none for a plain table)."""
        return {}

    def condition(self, conditions: Sequence[str]) -> str:
        """SQL for the conjunction of named flags of the base table."""
        parts = []
        for condition in conditions:
            negate = condition.startswith("!")
            expr = self.source.flags[condition[1:] if negate else condition]
            parts.append(f"NOT ({expr})" if negate else f"({expr})")
        return " AND ".join(parts)

    def term(self, term: Term, params: dict[str, Any], index: int) -> str | None:
        """SQL aggregate for ``term`` on this table, or None when this table cannot answer it."""
        if self.rollup is None:
            source = self.source
            cond = self.condition(term.conditions)
            column = source.measures.get(term.measure, "")
            if term.aggregation == "count":
                return f"countIf({cond})" if cond else "count()"
            if term.aggregation == "uniq":
                return f"uniqExactIf({column}, {cond})" if cond else f"uniqExact({column})"
            if term.aggregation == "sum":
                return f"sumIf({column}, {cond})" if cond else f"sum({column})"
            # Over no rows avg is nan and quantileExact of an integer column is 0: both are "no value".
            rows = f"countIf({cond})" if cond else "count()"
            if term.aggregation == "avg":
                return f"if({rows} = 0, NULL, {f'avgIf({column}, {cond})' if cond else f'avg({column})'})"
            if term.aggregation == "quantile":
                name = f"q{index}"
                params[name] = float(term.quantile or 0.5)
                if cond:
                    return f"if({rows} = 0, NULL, quantileExactIf(%({name})s)({column}, {cond}))"
                return f"if({rows} = 0, NULL, quantileExact(%({name})s)({column}))"
            return None
        rollup = self.rollup
        flags = tuple(sorted(term.conditions))
        count_col = rollup.counts.get(flags)
        sum_col = rollup.sums.get((term.measure, flags))
        if term.aggregation == "count" and count_col:
            return f"sum({count_col})"
        if term.aggregation == "sum" and sum_col:
            return f"sum({sum_col})"
        if term.aggregation == "avg" and sum_col and count_col:
            return f"if(sum({count_col}) = 0, NULL, sum({sum_col}) / sum({count_col}))"
        return None

    def value(self, metric: CompiledMetric, params: dict[str, Any]) -> str | None:
        rendered = [self.term(term, params, i) for i, term in enumerate(metric.terms)]
        if any(r is None for r in rendered):
            return None
        if metric.spec.aggregation == "ratio":
            num, den = rendered
            return f"if({den} = 0, NULL, {num} / {den})"
        value = rendered[0]
        assert value is not None
        return value


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
    for rollup in ROLLUPS.values():
        if rollup.base != metric.source.key:
            continue
        if request.interval is not None and INTERVALS[request.interval][0] % rollup.granularity:
            continue
        if not needed <= set(rollup.dimensions):
            continue
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


# --- Results ----------------------------------------------------------------------------------


class Point(TypedDict):
    t: str  # bucket start, RFC 3339 UTC
    value: float | int | None


class Series(TypedDict):
    group: dict[str, str]
    points: list[Point]
    total: float | int | None


def bucket_starts(request: MetricRequest) -> list[int]:
    """Epoch seconds of every bucket that [start, end) touches, aligned on the UTC interval.

    A range that cuts a bucket still yields that bucket; its value covers only the part inside.
    """
    if request.interval is None:
        return []
    step = INTERVALS[request.interval][0]
    end = request.end.timestamp()
    starts = []
    t = int(request.start.timestamp()) // step * step
    while t < end:
        starts.append(t)
        t += step
    return starts


@functools.lru_cache(maxsize=256)
def _bucket_labels(start: float, end: float, interval: str) -> tuple[tuple[int, str], ...]:
    """(epoch seconds, RFC 3339 label) of each bucket; shared by every metric and group of a request."""
    request = MetricRequest(
        start=datetime.fromtimestamp(start, UTC), end=datetime.fromtimestamp(end, UTC), interval=interval
    )
    return tuple((t, datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) for t in bucket_starts(request))


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return value
    return int(value)


def series_assemble(metric: CompiledMetric, request: MetricRequest, rows: Sequence[Sequence[Any]]) -> list[Series]:
    """Rows of :func:`query_build`'s SQL -> API series, empty buckets filled per the metric."""
    n = len(request.group_by)
    empty: float | int | None = 0 if metric.zero_filled else None
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[tuple[Any, ...]] = []
    for row in rows:
        key = tuple(row[:n])
        bucket, is_total, value = row[n], row[n + 1], row[n + 2]
        entry = groups.get(key)
        if entry is None:
            entry = groups[key] = {"points": {}, "total": empty}
            order.append(key)
        if is_total:
            entry["total"] = _json_number(value)
        else:
            entry["points"][int(bucket)] = _json_number(value)
    if not groups and n == 0:
        groups[()] = {"points": {}, "total": empty}
        order.append(())
    if n:
        # Largest total first, then by group values; ranked before any point is built, so groups
        # past ``limit`` cost nothing.
        order.sort(key=lambda k: (groups[k]["total"] is None, -(groups[k]["total"] or 0), tuple(str(v) for v in k)))
        del order[request.limit :]
    buckets = (
        _bucket_labels(request.start.timestamp(), request.end.timestamp(), request.interval) if request.interval else ()
    )
    series: list[Series] = []
    for key in order:
        entry = groups[key]
        points: list[Point]
        if request.interval:
            get = entry["points"].get
            points = [{"t": label, "value": get(t, empty)} for t, label in buckets]
        else:
            # No interval: the whole range is one bucket, labelled with its start (API.md's shape).
            points = [{"t": request.start.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": entry["total"]}]
        series.append(
            {"group": dict(zip(request.group_by, key, strict=True)), "points": points, "total": entry["total"]}
        )
    return series


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
