"""Cluster mode: the whole ClickHouse schema as ON CLUSTER DDL (analytics_platform/warehouse.py).

Runs only with ``CLICKHOUSE_CLUSTER`` set (the router skips it on a single node, and skips every
earlier ClickHouse operation in cluster mode): a new cluster gets ``<t>_local`` Replicated tables,
``<t>`` Distributed tables and the materialized views on the local tables, in one step. Statements
are ``IF NOT EXISTS``, so a rerun after a partial failure completes the schema. A later schema
change adds a migration with both a single-node operation and a cluster one (idempotent, e.g.
``ADD COLUMN IF NOT EXISTS ... ON CLUSTER``), since this one builds the schema of its time.
``manage.py clickhouse_ddl --cluster NAME`` prints these statements for review.
"""

from typing import Any

from django.db import migrations

from analytics_platform import warehouse


def cluster_schema_create(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, engine FROM system.tables WHERE database = %s AND name IN %s",
            [database, tuple(warehouse.names())],
        )
        existing = cursor.fetchall()
    warehouse.cluster_schema_check(existing)
    for statement in warehouse.statements(warehouse.cluster_name(), database):
        schema_editor.execute(statement)


def cluster_schema_drop(apps: Any, schema_editor: Any) -> None:
    database = schema_editor.connection.settings_dict["NAME"]
    for statement in warehouse.drop_statements(warehouse.cluster_name(), database):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("streams", "0005_events_ttl_from_settings"), ("metrics", "0004_chained_coarse_rollups")]

    operations = [
        migrations.RunPython(
            cluster_schema_create, cluster_schema_drop, hints={"clickhouse": True, "cluster_schema": True}
        ),
    ]
