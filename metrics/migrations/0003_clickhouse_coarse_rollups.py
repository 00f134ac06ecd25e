"""Coarse rollups for dashboard-sized questions (ClickHouse; Django's database is untouched).

The streams rollups key every row by video and all six dimensions, so over 30 days they hold
about as many rows as there are views (and a seventh of the raw events): a 30-day series without
a breakdown still scans millions of rows. These keep only what the usual dashboard questions group
by, so those read thousands of rows instead:

* ``metrics_event_type_minute`` / ``_hour``: events per (bucket, type);
* ``metrics_view_minute`` / ``_hour``: view QoE sums per bucket of view start;
* ``metrics_view_video_day``: view QoE sums per (day, video) for per-video breakdowns.

They are SummingMergeTree tables fed by materialized views on ``events`` / ``view_summaries``
(the same sums as the streams rollups, so a metric has the same value whichever table answers),
with the same TTLs as the streams rollups of the same grain. The backfill copies rows already
stored when the migration runs; run it with ingestion paused, or rows inserted between the
materialized view's creation and the backfill are counted twice.
"""

from django.db import migrations

_VIEW_SUMS = """
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
_VIEW_COLUMNS = """
    views UInt64, started_views UInt64, watch_time_ms UInt64, rebuffer_duration_ms UInt64,
    rebuffer_count UInt64, start_failures UInt64, playback_failures UInt64, exits_before_start UInt64,
    startup_time_ms_sum UInt64
"""


def _rollup(table: str, *, columns: str, key: str, partition: str, ttl_days: int, select: str, source: str, group: str):
    view = f"{table}_mv"
    return migrations.RunSQL(
        [
            f"""
            CREATE TABLE {table} (bucket DateTime('UTC'), {columns})
            ENGINE = SummingMergeTree ORDER BY ({key}) PARTITION BY {partition}
            TTL bucket + INTERVAL {ttl_days} DAY SETTINGS ttl_only_drop_parts = 1
            """,
            f"CREATE MATERIALIZED VIEW {view} TO {table} AS SELECT {select} FROM {source} GROUP BY {group}",  # noqa: S608
            f"INSERT INTO {table} SELECT {select} FROM {source} GROUP BY {group}",  # noqa: S608 - constants only
        ],
        reverse_sql=[f"DROP VIEW IF EXISTS {view}", f"DROP TABLE IF EXISTS {table}"],
        hints={"clickhouse": True},
    )


def _event_type(grain: str, ttl_days: int, partition: str):
    return _rollup(
        f"metrics_event_type_{grain}",
        columns="type LowCardinality(String), events UInt64, late_events UInt64",
        key="bucket, type",
        partition=partition,
        ttl_days=ttl_days,
        select=f"toDateTime(toStartOf{grain.title()}(ts), 'UTC') AS bucket, type, count() AS events, countIf(late) AS late_events",
        source="events",
        group="bucket, type",
    )


def _view(grain: str, ttl_days: int, partition: str):
    return _rollup(
        f"metrics_view_{grain}",
        columns=_VIEW_COLUMNS,
        key="bucket",
        partition=partition,
        ttl_days=ttl_days,
        select=f"toDateTime(toStartOf{grain.title()}(start_ts), 'UTC') AS bucket, {_VIEW_SUMS}",
        source="view_summaries",
        group="bucket",
    )


class Migration(migrations.Migration):
    dependencies = [("metrics", "0002_builtin_metrics"), ("streams", "0002_ttl_and_rollup_views")]

    operations = [
        _event_type("minute", 30, "toYYYYMMDD(bucket)"),
        _event_type("hour", 400, "toYYYYMM(bucket)"),
        _view("minute", 30, "toYYYYMMDD(bucket)"),
        _view("hour", 400, "toYYYYMM(bucket)"),
        _rollup(
            "metrics_view_video_day",
            columns=f"video_id String, {_VIEW_COLUMNS}",
            key="bucket, video_id",
            partition="toYYYYMM(bucket)",
            ttl_days=400,
            select=f"toDateTime(toStartOfDay(start_ts), 'UTC') AS bucket, video_id, {_VIEW_SUMS}",
            source="view_summaries",
            group="bucket, video_id",
        ),
    ]
