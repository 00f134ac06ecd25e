"""Single-node mode: the schema module describes exactly what the migrations built, and the
router runs the same migration operations as before (the cluster ones only in cluster mode)."""

from __future__ import annotations

import importlib
import re
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

from analytics_platform import warehouse
from analytics_platform.clickhouse import client_get
from analytics_platform.db_routers import CLICKHOUSE_DB, ClickHouseRouter
from streams import sinks

CHECK_DB = "warehouse_schema_check"


def _unwrap(expr: str) -> str:
    # A one-element key prints as "(f(x))" when Django built it, "f(x)" from our DDL.
    if expr.startswith("(") and expr.endswith(")") and "," not in expr:
        return expr[1:-1]
    return expr


def _describe(client: Any, database: str) -> dict[str, Any]:
    tables = {}
    for name, engine, partition_key, sorting_key, create, as_select in client.execute(
        "SELECT name, engine, partition_key, sorting_key, create_table_query, as_select FROM system.tables"
        " WHERE database = %(db)s AND name != 'django_migrations'",
        {"db": database},
    ):
        ttl = re.search(r" TTL (.*?) SETTINGS ", create)
        target = re.search(r" TO (\S+)", create)  # a materialized view's target table
        tables[name] = {
            "engine": engine,
            "partition_key": _unwrap(partition_key),
            "sorting_key": sorting_key,
            "ttl": ttl.group(1) if ttl else None,
            "ttl_only_drop_parts": "ttl_only_drop_parts = 1" in create,
            "as_select": as_select.replace(f"{database}.", ""),
            "target": target.group(1).replace(f"{database}.", "") if target else "",
        }
    for table, name, kind in client.execute(
        "SELECT table, name, type FROM system.columns WHERE database = %(db)s ORDER BY table, position",
        {"db": database},
    ):
        if table in tables:
            tables[table].setdefault("columns", []).append((name, kind))
    return tables


@pytest.mark.clickhouse
@pytest.mark.django_db(databases=["default", "clickhouse"])
def test_the_schema_module_describes_the_migrated_database() -> None:
    client = client_get()
    try:
        migrated = client.execute("SELECT currentDatabase()")[0][0]
        client.execute(f"DROP DATABASE IF EXISTS {CHECK_DB}")
        client.execute(f"CREATE DATABASE {CHECK_DB}")
        for statement in warehouse.statements(None, CHECK_DB):
            client.execute(statement)
        expected, built = _describe(client, migrated), _describe(client, CHECK_DB)
        assert set(built) == set(expected) == set(warehouse.names()) | {v.name for v in warehouse.MATERIALIZED_VIEWS}
        for name in expected:
            assert built[name] == expected[name], name
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {CHECK_DB}")
        client.disconnect()


def test_single_node_runs_the_migrations_it_always_ran() -> None:
    router = ClickHouseRouter()
    with override_settings(CLICKHOUSE_CLUSTER=""):
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", clickhouse=True) is True
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", model_name="event") is True
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", clickhouse=True, cluster_schema=True) is False
        assert router.allow_migrate("default", "streams", clickhouse=True, cluster_schema=True) is False
        assert sinks.insert_settings() == "SETTINGS optimize_on_insert = 0"


def test_cluster_mode_runs_only_the_cluster_schema() -> None:
    router = ClickHouseRouter()
    with override_settings(CLICKHOUSE_CLUSTER="analytics"):
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", clickhouse=True) is False
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", model_name="event") is False
        assert router.allow_migrate(CLICKHOUSE_DB, "metrics", clickhouse=True) is False
        assert router.allow_migrate(CLICKHOUSE_DB, "streams", clickhouse=True, cluster_schema=True) is True
        assert router.allow_migrate("default", "streams", clickhouse=True, cluster_schema=True) is False
        assert "insert_distributed_sync = 1" in sinks.insert_settings()
        # Django's own tables never go to ClickHouse, in either mode.
        assert router.allow_migrate(CLICKHOUSE_DB, "auth", model_name="user") is False


def test_the_ddl_command_prints_the_cluster_statements() -> None:
    out = StringIO()
    call_command("clickhouse_ddl", "--cluster", "prod-cluster", "--database", "analytics", stdout=out)
    printed = out.getvalue().splitlines()
    assert printed == [s + ";" for s in warehouse.statements("prod-cluster", "analytics")]
    assert all(" ON CLUSTER 'prod-cluster' " in line for line in printed)
    single = StringIO()
    with override_settings(CLICKHOUSE_CLUSTER=""):
        call_command("clickhouse_ddl", stdout=single)
    assert "ON CLUSTER" not in single.getvalue() and "Distributed" not in single.getvalue()


def test_a_cluster_name_cannot_break_out_of_its_literal() -> None:
    statement = warehouse.statements("a' ; DROP TABLE events; --", "analytics")[1]
    assert "ON CLUSTER 'a\\' ; DROP TABLE events; --' AS" in statement
    assert warehouse.without_on_cluster(statement).startswith("CREATE TABLE IF NOT EXISTS `analytics`.`events` AS ")


def test_cluster_ddl_refuses_a_database_with_the_single_node_schema() -> None:
    with pytest.raises(warehouse.SingleNodeSchemaError, match="events, view_summaries"):
        warehouse.cluster_schema_check([("events", "MergeTree"), ("view_summaries", "ReplacingMergeTree")])
    # A rerun over a partly built cluster schema is fine: Distributed tables under the names.
    warehouse.cluster_schema_check([("events", "Distributed")])
    warehouse.cluster_schema_check([])


@pytest.mark.clickhouse
@pytest.mark.django_db(databases=["default", "clickhouse"])
def test_the_cluster_migration_refuses_the_migrated_single_node_database() -> None:
    migration = importlib.import_module("streams.migrations.0006_cluster_schema")
    with (
        override_settings(CLICKHOUSE_CLUSTER="analytics"),
        connections[CLICKHOUSE_DB].schema_editor() as editor,
        pytest.raises(warehouse.SingleNodeSchemaError, match="events"),
    ):
        migration.cluster_schema_create(None, editor)
