"""The coarse rollups read the streams minute/hour rollups' inserts instead of raw rows.

Before, ``events`` fed four materialized views and ``view_summaries`` five, each aggregating
every inserted row again. Now only the streams minute rollups read raw rows; these views read
their (already grouped) insert blocks: per (bucket, type) sums of the per-(bucket, type,
dimensions) sums, and coarser buckets from finer ones. Exactly the same numbers: every column is
a count or a sum, buckets are UTC (given explicitly) and a minute lies within one hour and an hour
within one day. (Events after 2106-02-07 overflow DateTime buckets in every rollup, before and
after; only there may a coarse bucket now differ.)

Run with ingestion paused: a row inserted between creating a new view and dropping the old one is
counted twice in that rollup (ClickHouse has no transactional DDL).
"""

from django.db import migrations

_VIEW_RAW_SUMS = """
    countIf(has_view_start) AS views,
    countIf(started) AS started_views,
    sum(watch_time_ms) AS watch_time_ms,
    sum(rebuffer_duration_ms) AS rebuffer_duration_ms,
    sum(rebuffer_count) AS rebuffer_count,
    countIf(start_failure) AS start_failures,
    countIf(playback_failure) AS playback_failures,
    countIf(exit_before_start) AS exits_before_start,
    sumIf(startup_time_ms, started) AS startup_time_ms_sum
"""
_VIEW_SUMS = (
    "sum(views) AS views, sum(started_views) AS started_views, sum(watch_time_ms) AS watch_time_ms,"
    " sum(rebuffer_duration_ms) AS rebuffer_duration_ms, sum(rebuffer_count) AS rebuffer_count,"
    " sum(start_failures) AS start_failures, sum(playback_failures) AS playback_failures,"
    " sum(exits_before_start) AS exits_before_start, sum(startup_time_ms_sum) AS startup_time_ms_sum"
)


def _grain(grain: str) -> str:
    return f"toDateTime(toStartOf{grain}(bucket, 'UTC'), 'UTC') AS bucket"


def _chain(table: str, *, source: str, select: str, group: str, old_select: str, old_source: str) -> migrations.RunSQL:
    old, new = f"{table}_mv", f"{table}_chained_mv"
    return migrations.RunSQL(
        [
            f"CREATE MATERIALIZED VIEW {new} TO {table} AS SELECT {select} FROM {source} GROUP BY {group}",  # noqa: S608
            f"DROP VIEW IF EXISTS {old}",
        ],
        reverse_sql=[
            f"CREATE MATERIALIZED VIEW {old} TO {table} AS SELECT {old_select} FROM {old_source} GROUP BY {group}",  # noqa: S608
            f"DROP VIEW IF EXISTS {new}",
        ],
        hints={"clickhouse": True},
    )


def _event_type_raw(grain: str) -> str:
    return f"toDateTime(toStartOf{grain}(ts), 'UTC') AS bucket, type, count() AS events, countIf(late) AS late_events"


class Migration(migrations.Migration):
    dependencies = [("metrics", "0003_clickhouse_coarse_rollups"), ("streams", "0004_chained_hour_rollups")]

    operations = [
        _chain(
            "metrics_event_type_minute",
            source="event_rollup_minute",
            select="bucket, type, sum(events) AS events, sum(late_events) AS late_events",
            group="bucket, type",
            old_select=_event_type_raw("Minute"),
            old_source="events",
        ),
        _chain(
            "metrics_event_type_hour",
            source="metrics_event_type_minute",
            select=f"{_grain('Hour')}, type, sum(events) AS events, sum(late_events) AS late_events",
            group="bucket, type",
            old_select=_event_type_raw("Hour"),
            old_source="events",
        ),
        _chain(
            "metrics_view_minute",
            source="view_rollup_minute",
            select=f"bucket, {_VIEW_SUMS}",
            group="bucket",
            old_select=f"toDateTime(toStartOfMinute(start_ts), 'UTC') AS bucket, {_VIEW_RAW_SUMS}",
            old_source="view_summaries",
        ),
        _chain(
            "metrics_view_hour",
            source="metrics_view_minute",
            select=f"{_grain('Hour')}, {_VIEW_SUMS}",
            group="bucket",
            old_select=f"toDateTime(toStartOfHour(start_ts), 'UTC') AS bucket, {_VIEW_RAW_SUMS}",
            old_source="view_summaries",
        ),
        _chain(
            "metrics_view_video_day",
            source="view_rollup_hour",
            select=f"{_grain('Day')}, video_id, {_VIEW_SUMS}",
            group="bucket, video_id",
            old_select=f"toDateTime(toStartOfDay(start_ts), 'UTC') AS bucket, video_id, {_VIEW_RAW_SUMS}",
            old_source="view_summaries",
        ),
    ]
