"""``event_dimension_hour``: event counts per hour, type and one dimension at a time.

0009 dropped ``event_rollup_hour`` (keyed by video and all six dimensions: about a row per raw
row), so event metrics broken down or filtered by a dimension read ``events``; at 10M events that
made ``GET /metrics`` slower at p95 than before 0009 (README "ClickHouse schema"). This rollup
counts each event once per dimension, under the dimension's name and value (``ARRAY JOIN``): an
hour holds a row per type and value of each dimension, hundreds, whatever the traffic. It answers
a breakdown or filter on one dimension (the planner reads it for exactly one dimension besides
``type``; two dimensions at once still read ``events``) and keeps those counts for 400 days.

History: filled once from ``events`` (its 90 days) between creating the table and its view, only
into an empty table, so a rerun after a partial run adds nothing. Run with ingestion paused, as
0009: rows inserted between the copy and the view's creation would be missing from the rollup
(``manage.py clickhouse_rollups_rebuild --table event_dimension_hour`` re-derives them).

Cluster mode (the router runs only the operation hinted ``cluster_schema``): the Replicated
``event_dimension_hour_local``, the Distributed table and the view on every node (``ON CLUSTER``,
``IF NOT EXISTS``: a cluster built by 0006 after this table was declared in ``warehouse`` already
has it); no history copy there (nor does the rebuild command run on a cluster): a cluster's
rollup counts from this migration on.
"""

from collections.abc import Callable, Sequence
from typing import Any

from django.db import migrations

from analytics_platform import warehouse

# Constants of this migration only (no input reaches them): the schema of its time.
_DIMS = ("device", "os", "browser", "country", "cdn", "player")
SELECT = (
    "SELECT toDateTime(toStartOfHour(ts, 'UTC'), 'UTC') AS bucket, dimension, type, value, count() AS events,"  # noqa: S608
    " countIf(late) AS late_events FROM events"
    f" ARRAY JOIN [{', '.join(repr(dim) for dim in _DIMS)}] AS dimension, [{', '.join(_DIMS)}] AS value"
    " GROUP BY bucket, dimension, type, value"
)
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS event_dimension_hour (bucket DateTime('UTC'), dimension LowCardinality(String),"
    " type LowCardinality(String), value LowCardinality(String), events UInt64, late_events UInt64)"
    " ENGINE = SummingMergeTree PARTITION BY toYYYYMM(bucket) ORDER BY (dimension, bucket, type, value)"
    " TTL toDateTime(bucket) + INTERVAL 400 DAY SETTINGS ttl_only_drop_parts = 1"
)
CREATE_VIEW = (
    f"CREATE MATERIALIZED VIEW IF NOT EXISTS events_to_event_dimension_hour TO event_dimension_hour AS {SELECT}"
)
DROP = ["DROP VIEW IF EXISTS events_to_event_dimension_hour", "DROP TABLE IF EXISTS event_dimension_hour"]


def history_fill(execute: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> int:
    """The counts of the events already stored, once: only into an empty rollup. Returns its rows."""
    if execute("SELECT count() FROM event_dimension_hour", [])[0][0]:
        return 0
    execute(f"INSERT INTO event_dimension_hour (bucket, dimension, type, value, events, late_events) {SELECT}", [])
    return int(execute("SELECT count() FROM event_dimension_hour", [])[0][0])


def single_node_history(apps: Any, schema_editor: Any) -> None:
    def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(sql, list(params))
            return list(cursor.fetchall()) if cursor.description else []

    history_fill(execute)


def cluster_apply(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    cluster = warehouse.cluster_name()
    table = warehouse.table_named(warehouse.EVENT_DIMENSION_HOUR)
    for statement in warehouse.cluster_table_statements(table, cluster, database):
        schema_editor.execute(statement)
    view = warehouse.view_named("events_to_event_dimension_hour")
    schema_editor.execute(warehouse.cluster_view_statement(view, cluster, database))


def cluster_drop(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    names = ("events_to_event_dimension_hour",)
    tables = (warehouse.EVENT_DIMENSION_HOUR,)
    for statement in warehouse.drop_named_statements(names, tables, warehouse.cluster_name(), database):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("streams", "0009_fewer_rollups")]

    operations = [
        migrations.RunSQL([CREATE_TABLE], reverse_sql=DROP[1:], hints={"clickhouse": True}),
        migrations.RunPython(single_node_history, migrations.RunPython.noop, hints={"clickhouse": True}),
        migrations.RunSQL([CREATE_VIEW], reverse_sql=DROP[:1], hints={"clickhouse": True}),
        migrations.RunPython(cluster_apply, cluster_drop, hints={"clickhouse": True, "cluster_schema": True}),
    ]
