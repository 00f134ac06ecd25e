"""ClickHouse tables written by the stream workers and read by metrics and the batch export.

analytics_platform/warehouse.py owns the schema (names, engines, keys, TTLs, views, cluster mode);
these models are the migrations' single-node history.

Tables (all ``MergeTree`` family, event times ``DateTime64(3, 'UTC')``):

``events`` -- every accepted event, once (deduplicated by ``event_id`` in the stream, see below).
    MergeTree, ``PARTITION BY toYYYYMMDD(ts)`` (the batch export reads one closed day = one
    partition; TTL drops whole days), ``ORDER BY (type, video_id, ts, event_id)``, TTL 90 days.
    ``late`` is 1 for an event that arrived after its view had closed (stored, counted in the
    rollups as ``late_events``, not applied to the view's summary).

``view_summaries`` -- one row per closed view (``session_id``): the QoE figures of API.md.
    ReplacingMergeTree, ``PARTITION BY toYYYYMM(start_ts)``, ``ORDER BY (video_id, start_ts,
    session_id)``, TTL 400 days. A view counts in the bucket of its ``start_ts``. Small (one row
    per view), so quantiles (startup time p50/p95) and exact distinct counts (unique viewers) are
    computed here directly. Migration 0007 adds seek latency and picture-quality sums.

``view_minutes`` -- one row per view and minute it spent playing or rebuffering, written while
    the view plays (migration 0008, DDL only: no Django model). MergeTree, ``PARTITION BY
    toYYYYMMDD(minute_ts)``, ``ORDER BY (minute_ts, video_id, session_id)``, TTL 30 days.
    ``concurrent_viewers``: ``uniqExact(session_id)`` per bucket of ``minute_ts``.

The rollups (every one, with its key and the view feeding it: analytics_platform/warehouse.py and
README "ClickHouse schema"; streams 0009 dropped ``event_rollup_minute``/``_hour`` and
``view_rollup_minute``, which held about a row per raw row). Only ``view_rollup_hour`` has a model:

``view_rollup_hour`` -- SummingMergeTree fed by a materialized view on ``view_summaries``:
    per (hour of view start, video_id, dimensions): ``views`` (views with a ``view_start``),
    ``started_views``, ``watch_time_ms``, ``rebuffer_duration_ms``, ``rebuffer_count``,
    ``start_failures``, ``playback_failures``, ``exits_before_start``, ``startup_time_ms_sum``.
    TTL 400 days.

How the metrics should query them (always ``sum()`` + ``GROUP BY``: a SummingMergeTree may hold
several not-yet-merged rows per key, so never read a rollup row as final):

* ``events``: ``sum(events)`` from ``metrics_event_type_minute``/``_hour`` (by type) or
  ``event_video_hour`` (by type and video) or ``event_dimension_hour`` (by type and one dimension:
  ``WHERE dimension = 'country'``, its ``value``); ``errors``: the same where ``type = 'error'``.
* ``views``: ``sum(views)`` from ``metrics_view_minute``/``_hour`` or ``view_rollup_hour`` (by
  dimension); ``watch_time_ms``: ``sum(watch_time_ms)``;
  ``rebuffer_ratio``: ``sum(rebuffer_duration_ms) / sum(watch_time_ms)``;
  ``video_start_failure_rate``: ``sum(start_failures) / sum(views)``;
  ``playback_failure_rate``: ``sum(playback_failures) / sum(views)``;
  ``exits_before_video_start_rate``: ``sum(exits_before_start) / sum(views)``.
* ``unique_viewers``: ``uniqExact(user_id)`` from ``view_summaries WHERE has_view_start``;
  ``video_startup_time_ms_p50/p95``: ``quantileExact(0.5)(startup_time_ms)`` from
  ``view_summaries WHERE started`` (the view's start bucket: ``toStartOfInterval(start_ts, ...)``).

Exactly-once: every row carries its source ``kafka_partition`` / ``kafka_offset`` (the offset of the
message whose processing produced it) and ``kafka_topic_id`` (the Kafka topic id: a recreated
topic -- the local broker keeps topics in memory only -- starts its offsets again at 0). The sink
inserts a partition's rows in offset order and, after a restart or a new assignment, skips rows
whose offset is <= the largest offset that table already holds for that topic and partition; the
stream state is restored to the last committed offset, so a replay recomputes the same rows and
the ones already stored are skipped (streams/sinks.py). The materialized views therefore see
every row once. Metrics need no ``FINAL``. ``view_summaries`` is a ReplacingMergeTree on
``session_id`` only as a second line of defence.

Migrations under ``streams/migrations`` are never edited once committed: add a new one.
"""

from __future__ import annotations

from clickhouse_backend import models
from django.db.models import Func


class Event(models.ClickhouseModel):
    """One accepted event (raw, for OLAP and the batch export)."""

    event_id = models.UUIDField(primary_key=True)
    type = models.StringField(low_cardinality=True)
    ts = models.DateTime64Field(precision=3)
    user_id = models.StringField()
    session_id = models.StringField(default="")
    video_id = models.StringField(default="")
    client_ts = models.DateTime64Field(precision=3)
    received_at = models.DateTime64Field(precision=3)
    position_ms = models.Int64Field(null=True)
    bitrate_kbps = models.Int64Field(null=True)
    error_code = models.StringField(default="")
    error_message = models.StringField(default="")
    fatal = models.BoolField(default=False)
    device = models.StringField(low_cardinality=True, default="")
    os = models.StringField(low_cardinality=True, default="")
    browser = models.StringField(low_cardinality=True, default="")
    country = models.StringField(low_cardinality=True, default="")
    cdn = models.StringField(low_cardinality=True, default="")
    player = models.StringField(low_cardinality=True, default="")
    properties = models.StringField(default="")  # JSON object text, "" when absent
    late = models.BoolField(default=False)
    kafka_partition = models.UInt16Field()
    kafka_offset = models.UInt64Field()
    kafka_topic_id = models.StringField(low_cardinality=True, default="")  # migration 0003

    class Meta:
        db_table = "events"
        engine = models.MergeTree(
            order_by=("type", "video_id", "ts", "event_id"),
            partition_by=Func("ts", function="toYYYYMMDD"),
            index_granularity=8192,
        )


class ViewSummary(models.ClickhouseModel):
    """One closed view: the per-view QoE figures (API.md) and its close reason."""

    session_id = models.StringField(primary_key=True)
    user_id = models.StringField()
    video_id = models.StringField(default="")
    start_ts = models.DateTime64Field(precision=3)
    end_ts = models.DateTime64Field(precision=3)
    device = models.StringField(low_cardinality=True, default="")
    os = models.StringField(low_cardinality=True, default="")
    browser = models.StringField(low_cardinality=True, default="")
    country = models.StringField(low_cardinality=True, default="")
    cdn = models.StringField(low_cardinality=True, default="")
    player = models.StringField(low_cardinality=True, default="")
    has_view_start = models.BoolField(default=False)
    started = models.BoolField(default=False)  # reached a first ``playing``
    startup_time_ms = models.UInt32Field(default=0)  # meaningful only when ``started``
    watch_time_ms = models.UInt64Field(default=0)
    rebuffer_count = models.UInt32Field(default=0)
    rebuffer_duration_ms = models.UInt64Field(default=0)
    error_count = models.UInt32Field(default=0)
    fatal_error_count = models.UInt32Field(default=0)
    start_failure = models.BoolField(default=False)  # fatal error before the first ``playing``
    playback_failure = models.BoolField(default=False)  # any fatal error
    exit_before_start = models.BoolField(default=False)  # ended with no ``playing`` and no fatal error
    max_position_ms = models.Int64Field(default=0)
    completion = models.Float32Field(null=True)  # 1 when ``ended``; position/duration when known
    event_count = models.UInt32Field(default=0)
    close_reason = models.StringField(low_cardinality=True)  # ended | view_end | idle | limit
    video_watched_id = models.UUIDField()  # the id of the VideoWatched derived event
    kafka_partition = models.UInt16Field()
    kafka_offset = models.UInt64Field()
    kafka_topic_id = models.StringField(low_cardinality=True, default="")  # migration 0003
    # Migration 0007 (analytics_platform.warehouse.VIEW_QUALITY_COLUMNS says what each holds).
    seek_count = models.UInt32Field(default=0)
    seek_latency_ms = models.UInt64Field(default=0)
    bitrate_time_ms = models.UInt64Field(default=0)
    bitrate_kbps_ms = models.Float64Field(default=0)
    max_bitrate_kbps = models.UInt64Field(default=0)
    scale_time_ms = models.UInt64Field(default=0)
    upscale_ms = models.Float64Field(default=0)
    downscale_ms = models.Float64Field(default=0)
    max_upscale = models.Float64Field(default=0)
    max_downscale = models.Float64Field(default=0)

    class Meta:
        db_table = "view_summaries"
        engine = models.ReplacingMergeTree(
            order_by=("video_id", "start_ts", "session_id"),
            partition_by=Func("start_ts", function="toYYYYMM"),
        )


class _ViewRollup(models.ClickhouseModel):
    bucket = models.DateTimeField(primary_key=True)
    video_id = models.StringField()
    device = models.StringField(low_cardinality=True)
    os = models.StringField(low_cardinality=True)
    browser = models.StringField(low_cardinality=True)
    country = models.StringField(low_cardinality=True)
    cdn = models.StringField(low_cardinality=True)
    player = models.StringField(low_cardinality=True)
    views = models.UInt64Field()
    started_views = models.UInt64Field()
    watch_time_ms = models.UInt64Field()
    rebuffer_duration_ms = models.UInt64Field()
    rebuffer_count = models.UInt64Field()
    start_failures = models.UInt64Field()
    playback_failures = models.UInt64Field()
    exits_before_start = models.UInt64Field()
    startup_time_ms_sum = models.UInt64Field()

    class Meta:
        abstract = True


_VIEW_ROLLUP_KEY = ("bucket", "video_id", "country", "device", "os", "browser", "cdn", "player")


class ViewRollupHour(_ViewRollup):
    """View QoE sums per hour of view start (fed by ``view_summaries_to_view_rollup_hour``, streams 0009)."""

    class Meta:
        db_table = "view_rollup_hour"
        engine = models.SummingMergeTree(order_by=_VIEW_ROLLUP_KEY, partition_by=Func("bucket", function="toYYYYMM"))
