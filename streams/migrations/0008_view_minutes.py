"""``view_minutes``: one row per view and minute it spent playing or rebuffering (concurrent viewers).

Single node: the table as written here (the schema of its time; ``warehouse`` describes the same
table and a test compares the two). Cluster mode (the router runs only the operation hinted
``cluster_schema``): the Replicated ``view_minutes_local`` and the Distributed ``view_minutes``
(sharded by ``kafka_partition``, like the other tables the sink writes), ``IF NOT EXISTS``: a
cluster built by 0006 after the table was declared in ``warehouse`` already has it.
"""

from typing import Any

from django.db import migrations

from analytics_platform import warehouse

_DIMS = ", ".join(f"{dim} LowCardinality(String)" for dim in ("device", "os", "browser", "country", "cdn", "player"))
CREATE = f"""
CREATE TABLE IF NOT EXISTS view_minutes (
    minute_ts DateTime64(3, 'UTC'), session_id String, user_id String, video_id String, {_DIMS},
    kafka_partition UInt16, kafka_offset UInt64, kafka_topic_id LowCardinality(String)
) ENGINE = MergeTree PARTITION BY toYYYYMMDD(minute_ts) ORDER BY (minute_ts, video_id, session_id)
TTL toDateTime(minute_ts) + INTERVAL 30 DAY SETTINGS ttl_only_drop_parts = 1
"""


def cluster_table_create(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    table = warehouse.table_named(warehouse.VIEW_MINUTES)
    for statement in warehouse.cluster_table_statements(table, warehouse.cluster_name(), database):
        schema_editor.execute(statement)


def cluster_table_drop(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    names = ("`view_minutes` ", "`view_minutes_local` ")
    for statement in warehouse.drop_statements(warehouse.cluster_name(), database):
        if any(name in statement for name in names):
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("streams", "0007_view_quality_columns")]

    operations = [
        migrations.RunSQL(CREATE, reverse_sql="DROP TABLE IF EXISTS view_minutes", hints={"clickhouse": True}),
        migrations.RunPython(
            cluster_table_create, cluster_table_drop, hints={"clickhouse": True, "cluster_schema": True}
        ),
    ]
