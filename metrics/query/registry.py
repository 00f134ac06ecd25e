"""Registries: the raw tables and rollups a metric can read, the only identifiers that reach SQL."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from analytics_platform import warehouse

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
    #: One dimension at a time (``Pivot``): a base row is counted once per pivoted dimension, under
    #: its name, so the rollup answers only questions on exactly one of them (``pivoted``), besides
    #: the dimensions it holds as columns; summed over every name it would count a row once per
    #: dimension.
    pivot: Pivot | None = None

    def pivoted(self, dimension: str) -> Rollup:
        """This pivot rollup as a table of one dimension: its rows of ``dimension``, the value
        column named as the dimension's column. ``dimension`` is a registry key (code, not input)."""
        assert self.pivot is not None and dimension in self.pivot.dimensions
        column = self.dimensions[dimension]
        fixed = {key: col for key, col in self.dimensions.items() if key not in self.pivot.dimensions}
        kept = [
            self.time_column,
            *fixed.values(),
            f"{self.pivot.value_column} AS {column}",
            *dict.fromkeys([*self.counts.values(), *self.sums.values()]),
        ]
        table = f"(SELECT {', '.join(kept)} FROM {self.table} WHERE {self.pivot.name_column} = '{column}')"  # noqa: S608 - code constants
        return replace(self, table=table, dimensions={**fixed, dimension: column}, pivot=None)


@dataclass(frozen=True)
class Pivot:
    """How a rollup holds several dimensions in two columns: each dimension's column name in
    ``name_column``, its value in ``value_column`` (``warehouse``'s ``ARRAY JOIN`` views)."""

    name_column: str
    value_column: str
    dimensions: tuple[str, ...]  # the registry keys pivoted


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
# Mux's published Video Quality Score: 100 * exp(-0.33 * (0.15 * Um + 0.85 * Ua)), Um the view's
# largest and Ua its playing-time-weighted average upscaling (fractions: 0.5 = 50 %); 85 for 50 %
# upscaling throughout. Defined for views with known picture sizes (the ``scaled`` flag).
_VIDEO_QUALITY = "100 * exp(-0.33 * (0.15 * max_upscale + 0.85 * upscale_ms / greatest(scale_time_ms, 1)))"
_VIEW_SCORES = {
    "video_quality_score": _VIDEO_QUALITY,
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
            # Seek latency and picture quality (streams 0007): per-view sums; time-weighted
            # figures are ratios of their sums over views.
            "seek_count": "seek_count",
            "seek_latency_sum_ms": "seek_latency_ms",
            "seek_latency_per_view_ms": "seek_latency_ms / greatest(seek_count, 1)",
            "bitrate_time_ms": "bitrate_time_ms",
            "bitrate_kbps_ms": "bitrate_kbps_ms",
            "scale_time_ms": "scale_time_ms",
            "upscale_percent_ms": "upscale_ms * 100",
            "downscale_percent_ms": "downscale_ms * 100",
            "max_upscale_percent": "max_upscale * 100",
            "max_downscale_percent": "max_downscale * 100",
            **_VIEW_SCORES,
        },
        flags={
            "seeked": "seek_count > 0",
            "scaled": "scale_time_ms > 0",
            "has_bitrate": "bitrate_time_ms > 0",
            "has_view_start": "has_view_start",
            "started": "started",
            "start_failure": "start_failure",
            "playback_failure": "playback_failure",
            "exit_before_start": "exit_before_start",
        },
        rows_per_second=30,
    ),
    # One row per view and minute it spent playing or rebuffering (streams 0008): a view's minutes
    # count while it plays, not when it closes. Distinct sessions of a minute bucket are the
    # minute's concurrent viewers; of a coarser bucket, the views that played during it.
    "view_minutes": Source(
        key="view_minutes",
        label="Watching minutes (one row per view and minute it spent playing or rebuffering)",
        table=warehouse.VIEW_MINUTES,
        time_column="minute_ts",
        dimensions=_VIEW_DIMENSIONS,
        measures={"session_id": "session_id", "user_id": "user_id", "video_id": "video_id"},
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
_EVENT_COUNTS: dict[tuple[str, ...], str] = {(): "events", ("late",): "late_events"}
_EVENT_PIVOT = ("country", "device", "os", "browser", "cdn", "player")
# The rollup tables (analytics_platform/warehouse.py owns names, keys and views). One chain per
# key, minute -> hour -> day where a grain is kept; a full-dimension key only for the view
# summaries and only per hour: keyed by video and every dimension, a minute rollup holds about a
# row per raw row, and its inserts and merges cost the server more than the raw table's (README
# "ClickHouse schema"). Questions no rollup holds read the raw tables.
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_SHORT, _LONG = warehouse.MINUTE_TTL_DAYS, warehouse.LONG_TTL_DAYS


def _rollups() -> list[Rollup]:
    return [
        Rollup(
            key="metrics_event_type_minute",
            label="Event counts per minute and type",
            table=warehouse.METRICS_EVENT_TYPE_MINUTE,
            base="events",
            granularity=_MINUTE,
            time_column="bucket",
            dimensions={"type": "type"},
            counts=_EVENT_COUNTS,
            retention_days=_SHORT,
            rows_per_bucket=10,
        ),
        Rollup(
            key="metrics_event_type_hour",
            label="Event counts per hour and type",
            table=warehouse.METRICS_EVENT_TYPE_HOUR,
            base="events",
            granularity=_HOUR,
            time_column="bucket",
            dimensions={"type": "type"},
            counts=_EVENT_COUNTS,
            retention_days=_LONG,
            rows_per_bucket=10,
        ),
        Rollup(
            key="event_video_hour",
            label="Event counts per hour, type and video",
            table=warehouse.EVENT_VIDEO_HOUR,
            base="events",
            granularity=_HOUR,
            time_column="bucket",
            dimensions={"type": "type", "videoId": "video_id"},
            counts=_EVENT_COUNTS,
            retention_days=_LONG,
            rows_per_bucket=10_000,
        ),
        Rollup(
            key="event_dimension_hour",
            label="Event counts per hour, type and one dimension",
            table=warehouse.EVENT_DIMENSION_HOUR,
            base="events",
            granularity=_HOUR,
            time_column="bucket",
            dimensions={"type": "type", **{k: _EVENT_DIMENSIONS[k] for k in _EVENT_PIVOT}},
            counts=_EVENT_COUNTS,
            retention_days=_LONG,
            # Types times one dimension's values (the pivot's rows of other dimensions are skipped
            # by the ORDER BY's leading ``dimension``).
            rows_per_bucket=1_000,
            pivot=Pivot("dimension", "value", _EVENT_PIVOT),
        ),
        Rollup(
            key="metrics_view_minute",
            label="View QoE sums per minute of view start",
            table=warehouse.METRICS_VIEW_MINUTE,
            base="views",
            granularity=_MINUTE,
            time_column="bucket",
            dimensions={},
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=_SHORT,
            rows_per_bucket=1,
        ),
        Rollup(
            key="metrics_view_hour",
            label="View QoE sums per hour of view start",
            table=warehouse.METRICS_VIEW_HOUR,
            base="views",
            granularity=_HOUR,
            time_column="bucket",
            dimensions={},
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=_LONG,
            rows_per_bucket=1,
        ),
        Rollup(
            key="view_rollup_hour",
            label="View QoE sums per hour of view start and every dimension",
            table=warehouse.VIEW_ROLLUP_HOUR,
            base="views",
            granularity=_HOUR,
            time_column="bucket",
            dimensions=_VIEW_DIMENSIONS,
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=_LONG,
            # Units of Source.rows_per_second (30 views/s): barely fewer rows than views.
            rows_per_bucket=60_000,
        ),
        Rollup(
            key="view_dimension_hour",
            label="View QoE sums per hour of view start and one dimension (or video)",
            table=warehouse.VIEW_DIMENSION_HOUR,
            base="views",
            granularity=_HOUR,
            time_column="bucket",
            dimensions=_VIEW_DIMENSIONS,
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=_LONG,
            # One dimension's values per hour: a few for most, the videos watched that hour for
            # videoId; well under view_rollup_hour's row per view.
            rows_per_bucket=5_000,
            pivot=Pivot("dimension", "value", tuple(_VIEW_DIMENSIONS)),
        ),
        Rollup(
            key="metrics_view_video_day",
            label="View QoE sums per day of view start and video",
            table=warehouse.METRICS_VIEW_VIDEO_DAY,
            base="views",
            granularity=_DAY,
            time_column="bucket",
            dimensions={"videoId": "video_id"},
            counts=_VIEW_COUNTS,
            sums=_VIEW_SUMS,
            retention_days=_LONG,
            rows_per_bucket=1_000,
        ),
    ]


ROLLUPS: dict[str, Rollup] = {r.key: r for r in _rollups()}


def source_choices() -> list[tuple[str, str]]:
    """Sources an analyst can pick: the raw tables and the selectable rollups."""
    choices = [(s.key, s.label) for s in SOURCES.values()]
    choices += [(r.key, r.label) for r in ROLLUPS.values() if r.selectable]
    return choices
