"""The hour rollups read the minute rollups' inserts instead of every raw row.

A materialized view runs its SELECT over each block inserted into its source table. Reading raw
``events`` / ``view_summaries`` blocks, each of the two hour views aggregated every inserted row
again; reading the minute rollup's insert block (already grouped by minute and all dimensions)
it aggregates a few rows per minute and key instead (bench/bench_sink.py measures it).

Exactly the same numbers: every rollup column is a count or a sum, and a sum of per-minute sums
(or counts) grouped by hour is the per-hour sum; the hour of a minute bucket is the hour of the
rows in it (buckets are UTC and every minute lies within one UTC hour; ``toStartOfHour`` is given
'UTC' explicitly so a server time zone cannot change it). Minute-table TTLs do not matter: a view
sees the inserted block before any TTL applies. One difference: events after 2106-02-07 overflow
the DateTime buckets in both rollups (as before); their hour bucket may now differ.

Run with ingestion paused: a row inserted between creating the new view and dropping the old one
would be counted twice in the hour rollup (ClickHouse has no transactional DDL).
"""

from django.db import migrations

_DIMS = "video_id, device, os, browser, country, cdn, player"
_HOUR = "toDateTime(toStartOfHour(bucket, 'UTC'), 'UTC') AS bucket"


def _chain(*, old: str, new: str, source: str, target: str, select: str, group: str, old_sql: str) -> migrations.RunSQL:
    return migrations.RunSQL(
        [
            f"CREATE MATERIALIZED VIEW {new} TO {target} AS SELECT {select} FROM {source} GROUP BY {group}",  # noqa: S608
            f"DROP VIEW IF EXISTS {old}",
        ],
        reverse_sql=[old_sql, f"DROP VIEW IF EXISTS {new}"],
        hints={"clickhouse": True},
    )


_OLD_EVENTS_HOUR = f"""
    CREATE MATERIALIZED VIEW events_to_event_rollup_hour TO event_rollup_hour AS
    SELECT
        toDateTime(toStartOfHour(ts), 'UTC') AS bucket, type, {_DIMS},
        count() AS events,
        countIf(type = 'error') AS errors,
        countIf(type = 'error' AND fatal) AS fatal_errors,
        countIf(late) AS late_events
    FROM events
    GROUP BY bucket, type, {_DIMS}
"""  # noqa: S608 -- constants of this migration only
_OLD_VIEWS_HOUR = f"""
    CREATE MATERIALIZED VIEW view_summaries_to_view_rollup_hour TO view_rollup_hour AS
    SELECT
        toDateTime(toStartOfHour(start_ts), 'UTC') AS bucket, {_DIMS},
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
"""  # noqa: S608 -- constants of this migration only
VIEW_SUMS = (
    "sum(views) AS views, sum(started_views) AS started_views, sum(watch_time_ms) AS watch_time_ms,"
    " sum(rebuffer_duration_ms) AS rebuffer_duration_ms, sum(rebuffer_count) AS rebuffer_count,"
    " sum(start_failures) AS start_failures, sum(playback_failures) AS playback_failures,"
    " sum(exits_before_start) AS exits_before_start, sum(startup_time_ms_sum) AS startup_time_ms_sum"
)


class Migration(migrations.Migration):
    dependencies = [("streams", "0003_kafka_topic_id")]

    operations = [
        _chain(
            old="events_to_event_rollup_hour",
            new="event_rollup_minute_to_event_rollup_hour",
            source="event_rollup_minute",
            target="event_rollup_hour",
            select=f"{_HOUR}, type, {_DIMS}, sum(events) AS events, sum(errors) AS errors,"
            " sum(fatal_errors) AS fatal_errors, sum(late_events) AS late_events",
            group=f"bucket, type, {_DIMS}",
            old_sql=_OLD_EVENTS_HOUR,
        ),
        _chain(
            old="view_summaries_to_view_rollup_hour",
            new="view_rollup_minute_to_view_rollup_hour",
            source="view_rollup_minute",
            target="view_rollup_hour",
            select=f"{_HOUR}, {_DIMS}, {VIEW_SUMS}",
            group=f"bucket, {_DIMS}",
            old_sql=_OLD_VIEWS_HOUR,
        ),
    ]
