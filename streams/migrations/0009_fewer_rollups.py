"""Fewer rollups: no rollup keyed by video and every dimension at the minute grain, none for events.

Measured (README "ClickHouse schema", bench/bench_streams.py's per-table breakdown): a rollup keyed
by bucket, type, video and the six dimensions holds nearly a row per raw row (a minute, or an hour,
rarely repeats such a key), so ``event_rollup_minute`` and ``event_rollup_hour`` wrote and merged
almost as many rows as ``events`` itself at every sink INSERT. Dropped: ``event_rollup_minute``,
``event_rollup_hour``, ``view_rollup_minute`` and their views. Added: ``event_video_hour`` (event
counts per hour, type and video: a video's page). The dashboard rollups that read the dropped
minute rollups' insert blocks now read the raw inserts (``events`` -> ``metrics_event_type_minute``,
``view_summaries`` -> ``metrics_view_minute``), and ``view_rollup_hour`` reads ``view_summaries``
directly: the same sums (the dropped views only added partial sums up). Event breakdowns by a
dimension read ``events`` (ORDER BY type, video_id, ts).

History: ``event_video_hour`` is filled from ``event_rollup_hour`` (its 400 days, summed over the
dimensions: ``history_copy``) before that is dropped, so a video's page keeps its past; the
per-dimension event counts older than ``events``' 90 days go with the dropped rollup.

Run with ingestion paused, as streams 0004: a row inserted between creating a new view and
dropping the old one that fed the same table would be counted twice there (no transactional DDL).

Cluster mode (the router runs only the operation hinted ``cluster_schema``): the same on every
node (``ON CLUSTER``, ``IF [NOT] EXISTS``: a cluster built by 0006 after this schema was declared
in ``warehouse`` already has it, and a rerun completes a partial run).
"""

from collections.abc import Callable, Sequence
from typing import Any

from django.db import migrations

from analytics_platform import warehouse

_RAW_VIEW_SUMS = (
    "countIf(has_view_start) AS views, countIf(started) AS started_views, sum(watch_time_ms) AS watch_time_ms,"
    " sum(rebuffer_duration_ms) AS rebuffer_duration_ms, sum(rebuffer_count) AS rebuffer_count,"
    " countIf(start_failure) AS start_failures, countIf(playback_failure) AS playback_failures,"
    " countIf(exit_before_start) AS exits_before_start, sumIf(startup_time_ms, started) AS startup_time_ms_sum"
)
_DIMS = "video_id, device, os, browser, country, cdn, player"
# Constants of this migration only (no input reaches them).

CREATE = [
    "CREATE TABLE IF NOT EXISTS event_video_hour (bucket DateTime('UTC'), type LowCardinality(String),"
    " video_id String, events UInt64, late_events UInt64) ENGINE = SummingMergeTree"
    " PARTITION BY toYYYYMM(bucket) ORDER BY (bucket, type, video_id)"
    " TTL toDateTime(bucket) + INTERVAL 400 DAY SETTINGS ttl_only_drop_parts = 1",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_event_video_hour TO event_video_hour AS"
    " SELECT toDateTime(toStartOfHour(ts, 'UTC'), 'UTC') AS bucket, type, video_id, count() AS events,"
    " countIf(late) AS late_events FROM events GROUP BY bucket, type, video_id",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_metrics_event_type_minute TO metrics_event_type_minute AS"
    " SELECT toDateTime(toStartOfMinute(ts, 'UTC'), 'UTC') AS bucket, type, count() AS events,"
    " countIf(late) AS late_events FROM events GROUP BY bucket, type",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS view_summaries_to_metrics_view_minute TO metrics_view_minute AS"  # noqa: S608
    f" SELECT toDateTime(toStartOfMinute(start_ts, 'UTC'), 'UTC') AS bucket, {_RAW_VIEW_SUMS}"
    " FROM view_summaries GROUP BY bucket",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS view_summaries_to_view_rollup_hour TO view_rollup_hour AS"  # noqa: S608
    f" SELECT toDateTime(toStartOfHour(start_ts, 'UTC'), 'UTC') AS bucket, {_DIMS}, {_RAW_VIEW_SUMS}"
    f" FROM view_summaries GROUP BY bucket, {_DIMS}",
]
_NEW_VIEWS = (
    "events_to_event_video_hour",
    "events_to_metrics_event_type_minute",
    "view_summaries_to_metrics_view_minute",
    "view_summaries_to_view_rollup_hour",
)
_OLD_VIEWS = (
    "events_to_event_rollup_minute",
    "event_rollup_minute_to_event_rollup_hour",
    "view_summaries_to_view_rollup_minute",
    "view_rollup_minute_to_view_rollup_hour",
    "metrics_event_type_minute_chained_mv",
    "metrics_view_minute_chained_mv",
)
_OLD_TABLES = ("event_rollup_minute", "event_rollup_hour", "view_rollup_minute")
DROP = [f"DROP VIEW IF EXISTS {name}" for name in _OLD_VIEWS] + [f"DROP TABLE IF EXISTS {name}" for name in _OLD_TABLES]


#: ``event_rollup_hour``'s history (400 days, where ``events`` keeps 90) summed into the new rollup's key.
HISTORY_COPY = (
    "INSERT INTO {target} (bucket, type, video_id, events, late_events)"
    " SELECT bucket, type, video_id, sum(events), sum(late_events) FROM {source} GROUP BY bucket, type, video_id"
)


def history_copy(execute: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], database: str) -> int:
    """Keep a video's event counts past the raw retention: copy them from the dropped hour rollup.

    Runs between creating ``event_video_hour`` and creating its view (ingestion paused, as the
    docstring says), and only into an empty table, so a rerun after a partial run adds nothing.
    Returns the rows copied (0 when there is no old rollup: a database created after this schema).
    """
    present = execute(
        "SELECT name FROM system.tables WHERE database = %s AND name IN ('event_rollup_hour', 'event_video_hour')",
        [database],
    )
    if len(present) < 2 or execute("SELECT count() FROM event_video_hour", [])[0][0]:
        return 0
    execute(HISTORY_COPY.format(target="event_video_hour", source="event_rollup_hour"), [])
    return int(execute("SELECT count() FROM event_video_hour", [])[0][0])


def _executor(schema_editor: Any) -> Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]:
    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return list(cursor.fetchall()) if cursor.description else []

    return execute


def single_node_history(apps: Any, schema_editor: Any) -> None:
    history_copy(_executor(schema_editor), schema_editor.connection.settings_dict["NAME"])


def cluster_apply(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    cluster = warehouse.cluster_name()
    for statement in warehouse.cluster_table_statements(
        warehouse.table_named(warehouse.EVENT_VIDEO_HOUR), cluster, database
    ):
        schema_editor.execute(statement)
    # No history copy here: cluster mode is as young as this migration (0006), so no cluster holds
    # an old event_rollup_hour with history to keep.
    for name in _NEW_VIEWS:
        schema_editor.execute(warehouse.cluster_view_statement(warehouse.view_named(name), cluster, database))
    for statement in warehouse.drop_named_statements(_OLD_VIEWS, _OLD_TABLES, cluster, database):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    # metrics 0004 chained views onto the minute rollups dropped here: it must have run first.
    dependencies = [("streams", "0008_view_minutes"), ("metrics", "0004_chained_coarse_rollups")]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="EventRollupMinute"),
                migrations.DeleteModel(name="EventRollupHour"),
                migrations.DeleteModel(name="ViewRollupMinute"),
            ],
        ),
        # Irreversible: the dropped rollups' rows are gone (a rebuild re-derives them from history).
        migrations.RunSQL(CREATE[:1], hints={"clickhouse": True}),
        migrations.RunPython(single_node_history, hints={"clickhouse": True}),
        migrations.RunSQL(CREATE[1:] + DROP, hints={"clickhouse": True}),
        migrations.RunPython(cluster_apply, hints={"clickhouse": True, "cluster_schema": True}),
    ]
