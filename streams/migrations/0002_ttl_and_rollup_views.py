"""TTL retention and the materialized views that feed the rollups.

django-clickhouse-backend 2.0 has no TTL option and no materialized views, so they are plain SQL.
``ttl_only_drop_parts`` makes expiry drop whole partitions instead of rewriting parts.
"""

from django.db import migrations

_DIMS = "video_id, device, os, browser, country, cdn, player"


def _ttl(table: str, column: str, days: int) -> migrations.RunSQL:
    return migrations.RunSQL(
        [
            f"ALTER TABLE {table} MODIFY SETTING ttl_only_drop_parts = 1",
            f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + INTERVAL {days} DAY",
        ],
        reverse_sql=[f"ALTER TABLE {table} REMOVE TTL"],
        hints={"clickhouse": True},
    )


def _event_rollup_view(grain: str) -> migrations.RunSQL:
    name = f"events_to_event_rollup_{grain}"
    return migrations.RunSQL(
        f"""
        CREATE MATERIALIZED VIEW {name} TO event_rollup_{grain} AS
        SELECT
            toDateTime(toStartOf{grain.title()}(ts), 'UTC') AS bucket, type, {_DIMS},
            count() AS events,
            countIf(type = 'error') AS errors,
            countIf(type = 'error' AND fatal) AS fatal_errors,
            countIf(late) AS late_events
        FROM events
        GROUP BY bucket, type, {_DIMS}
        """,  # noqa: S608 -- built from constants of this migration only
        reverse_sql=f"DROP VIEW IF EXISTS {name}",
        hints={"clickhouse": True},
    )


def _view_rollup_view(grain: str) -> migrations.RunSQL:
    name = f"view_summaries_to_view_rollup_{grain}"
    return migrations.RunSQL(
        f"""
        CREATE MATERIALIZED VIEW {name} TO view_rollup_{grain} AS
        SELECT
            toDateTime(toStartOf{grain.title()}(start_ts), 'UTC') AS bucket, {_DIMS},
            countIf(has_view_start) AS views,
            countIf(started) AS started_views,
            sum(watch_time_ms) AS watch_time_ms,
            sum(rebuffer_duration_ms) AS rebuffer_duration_ms,
            sum(rebuffer_count) AS rebuffer_count,
            countIf(start_failure) AS start_failures,
            countIf(playback_failure) AS playback_failures,
            countIf(exit_before_start) AS exits_before_start,
            sumIf(startup_time_ms, started) AS startup_time_ms_sum
        FROM view_summaries
        GROUP BY bucket, {_DIMS}
        """,  # noqa: S608 -- built from constants of this migration only
        reverse_sql=f"DROP VIEW IF EXISTS {name}",
        hints={"clickhouse": True},
    )


class Migration(migrations.Migration):
    dependencies = [("streams", "0001_initial")]

    operations = [
        _ttl("events", "ts", 90),
        _ttl("view_summaries", "start_ts", 400),
        _ttl("event_rollup_minute", "bucket", 30),
        _ttl("event_rollup_hour", "bucket", 400),
        _ttl("view_rollup_minute", "bucket", 30),
        _ttl("view_rollup_hour", "bucket", 400),
        _event_rollup_view("minute"),
        _event_rollup_view("hour"),
        _view_rollup_view("minute"),
        _view_rollup_view("hour"),
    ]
