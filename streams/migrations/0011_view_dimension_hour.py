"""``view_dimension_hour``: view QoE sums per hour of view start and one dimension (or video) at a time.

As 0010 for events: ``view_rollup_hour`` is keyed by video and all six dimensions, about a row per
view, so an hourly breakdown of view metrics by video or by country over weeks summed nearly every
view (the slowest questions of ``bench/bench_metrics.py`` at 10M events, README "ClickHouse
schema"). This rollup counts each view once per dimension, under the dimension's name and value
(``ARRAY JOIN``): an hour holds a row per value of each dimension and per video watched. The
planner reads it for a question on exactly one of them; two at once still read
``view_rollup_hour``.

History: filled once from ``view_summaries`` (400 days, the rollup's TTL; ``FINAL``, as the
rebuild reads it) between creating the table and its view, only into an empty table. Run with
ingestion paused, as 0009 and 0010.

Cluster mode (the router runs only the operation hinted ``cluster_schema``): the Replicated local
table, the Distributed table and the view on every node (``IF NOT EXISTS``); no history copy there
(nor does the rebuild command run on a cluster): a cluster's rollup counts from this migration on.
"""

from collections.abc import Callable, Sequence
from typing import Any

from django.db import migrations

from analytics_platform import warehouse

# Constants of this migration only (no input reaches them): the schema of its time.
_DIMS = ("video_id", "device", "os", "browser", "country", "cdn", "player")
_SUMS = (
    "countIf(has_view_start) AS views, countIf(started) AS started_views, sum(watch_time_ms) AS watch_time_ms,"
    " sum(rebuffer_duration_ms) AS rebuffer_duration_ms, sum(rebuffer_count) AS rebuffer_count,"
    " countIf(start_failure) AS start_failures, countIf(playback_failure) AS playback_failures,"
    " countIf(exit_before_start) AS exits_before_start, sumIf(startup_time_ms, started) AS startup_time_ms_sum"
)
_COLUMNS = (
    "bucket, dimension, value, views, started_views, watch_time_ms, rebuffer_duration_ms, rebuffer_count,"
    " start_failures, playback_failures, exits_before_start, startup_time_ms_sum"
)


def _select(source: str) -> str:
    return (
        f"SELECT toDateTime(toStartOfHour(start_ts, 'UTC'), 'UTC') AS bucket, dimension, value, {_SUMS}"  # noqa: S608
        f" FROM {source}"
        f" ARRAY JOIN [{', '.join(repr(dim) for dim in _DIMS)}] AS dimension, [{', '.join(_DIMS)}] AS value"
        " GROUP BY bucket, dimension, value"
    )


_SUMS_COLUMNS = ", ".join(f"{name} UInt64" for name in _COLUMNS.split(", ")[3:])
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS view_dimension_hour (bucket DateTime('UTC'), dimension LowCardinality(String),"
    f" value String, {_SUMS_COLUMNS}) ENGINE = SummingMergeTree PARTITION BY toYYYYMM(bucket)"
    " ORDER BY (dimension, bucket, value) TTL toDateTime(bucket) + INTERVAL 400 DAY SETTINGS ttl_only_drop_parts = 1"
)
CREATE_VIEW = (
    "CREATE MATERIALIZED VIEW IF NOT EXISTS view_summaries_to_view_dimension_hour TO view_dimension_hour AS"
    f" {_select('view_summaries')}"
)
DROP = ["DROP VIEW IF EXISTS view_summaries_to_view_dimension_hour", "DROP TABLE IF EXISTS view_dimension_hour"]


def history_fill(execute: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> int:
    """The sums of the views already stored, once: only into an empty rollup. Returns its rows."""
    if execute("SELECT count() FROM view_dimension_hour", [])[0][0]:
        return 0
    execute(f"INSERT INTO view_dimension_hour ({_COLUMNS}) {_select('view_summaries FINAL')}", [])
    return int(execute("SELECT count() FROM view_dimension_hour", [])[0][0])


def single_node_history(apps: Any, schema_editor: Any) -> None:
    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return list(cursor.fetchall()) if cursor.description else []

    history_fill(execute)


def cluster_apply(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    cluster = warehouse.cluster_name()
    table = warehouse.table_named(warehouse.VIEW_DIMENSION_HOUR)
    for statement in warehouse.cluster_table_statements(table, cluster, database):
        schema_editor.execute(statement)
    view = warehouse.view_named("view_summaries_to_view_dimension_hour")
    schema_editor.execute(warehouse.cluster_view_statement(view, cluster, database))


def cluster_drop(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    names = ("view_summaries_to_view_dimension_hour",)
    tables = (warehouse.VIEW_DIMENSION_HOUR,)
    for statement in warehouse.drop_named_statements(names, tables, warehouse.cluster_name(), database):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("streams", "0010_event_dimension_hour")]

    operations = [
        migrations.RunSQL([CREATE_TABLE], reverse_sql=DROP[1:], hints={"clickhouse": True}),
        migrations.RunPython(single_node_history, migrations.RunPython.noop, hints={"clickhouse": True}),
        migrations.RunSQL([CREATE_VIEW], reverse_sql=DROP[:1], hints={"clickhouse": True}),
        migrations.RunPython(cluster_apply, cluster_drop, hints={"clickhouse": True, "cluster_schema": True}),
    ]
