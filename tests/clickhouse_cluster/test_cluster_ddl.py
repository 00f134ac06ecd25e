"""The cluster DDL (analytics_platform/warehouse.py), checked as far as this machine allows.

Every statement parses with ``ON CLUSTER`` (``formatQuery``) and runs without it in chdb against a
real ZooKeeper with the shard/replica macros set: Replicated engines register their replication
paths, keys, partitions, TTLs and version columns are checked, Distributed tables resolve the
cluster and their sharding key, materialized views resolve their local source and target. Broken
variants (a wrong version column, an unknown key column or macro, ...) must fail the same check.
Not checked (not possible here, see README): ON CLUSTER execution, replication, cross-shard reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from analytics_platform import warehouse
from tests.clickhouse_cluster.conftest import CLUSTER, REPLICA, SHARD, ZooKeeper, chdb_config, chdb_run, zk_ls

DB = "analytics"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _broken_cases() -> dict[str, list[str]]:
    """Each case: one table's (or view's) statements without ON CLUSTER, on names of its own so
    ``IF NOT EXISTS`` never skips the check."""
    views = warehouse.table_named(warehouse.VIEW_SUMMARIES)
    events = warehouse.table_named(warehouse.EVENTS)

    def table_case(table: warehouse.Table) -> list[str]:
        return [warehouse.without_on_cluster(s) for s in warehouse.cluster_table_statements(table, CLUSTER, DB)]

    view = warehouse.MATERIALIZED_VIEWS[0]
    return {
        # The control: the same mechanism with a valid version column succeeds.
        "control_version": table_case(dataclasses.replace(views, name="control_version", version="kafka_offset")),
        "version_missing": table_case(dataclasses.replace(views, name="version_missing", version="no_such_column")),
        "version_string": table_case(dataclasses.replace(views, name="version_string", version="video_id")),
        "order_by_unknown": table_case(
            dataclasses.replace(events, name="order_by_unknown", order_by=("type", "no_such_column"))
        ),
        "partition_unknown": table_case(
            dataclasses.replace(events, name="partition_unknown", partition_by="toYYYYMMDD(no_such_column)")
        ),
        "sharding_unknown": table_case(
            dataclasses.replace(events, name="sharding_unknown", sharding_key="no_such_column")
        ),
        "macro_unknown": [
            s.replace("{replica}", "{no_such_macro}")
            for s in table_case(dataclasses.replace(events, name="macro_unknown"))
        ],
        "view_column_unknown": [
            warehouse.without_on_cluster(
                f"CREATE MATERIALIZED VIEW `{DB}`.`view_column_unknown` TO `{DB}`.`{view.target}_local`"
                f" AS SELECT no_such_column AS bucket FROM `{DB}`.`{view.source}_local`"
            )
        ],
    }


UPGRADED = "upgrade_0007"  # a view_summaries built before streams 0007, on a name of its own


def _upgrade_statements() -> list[str]:
    """A cluster's view_summaries as streams 0006 built it before 0007, then 0007's DDL, twice."""
    views = warehouse.table_named(warehouse.VIEW_SUMMARIES)
    old = tuple(c for c in views.columns if c not in warehouse.VIEW_QUALITY_COLUMNS)
    before = dataclasses.replace(views, name=UPGRADED, columns=old)
    migration = importlib.import_module("streams.migrations.0007_view_quality_columns")
    adds = warehouse.add_columns_statements(before, migration._COLUMNS, CLUSTER, DB)
    assert all(f" ON CLUSTER {_literal(CLUSTER)} ADD COLUMN IF NOT EXISTS " in s for s in adds), adds
    parse = [f"SELECT formatQuery({_literal(s)})" for s in adds]
    # A Replicated table of this chdb takes no ALTER (its replicas stay read-only: no replication
    # threads), so the local table is its unreplicated engine here; the columns DDL is the same.
    local, distributed = warehouse.cluster_table_statements(before, CLUSTER, DB)
    local = re.sub(r"Replicated(\w+)\('[^']*', '[^']*'", r"\1(", local).replace("MergeTree()", "MergeTree")
    return [*parse, *(warehouse.without_on_cluster(s) for s in (local, distributed, *adds, *adds))]


# The streams migrations with a cluster operation of their own (after 0006 built the cluster schema).
CLUSTER_OPERATIONS = {
    "0009": "0009_fewer_rollups",
    "0010": "0010_event_dimension_hour",
    "0011": "0011_view_dimension_hour",
}


def _cluster_operation_statements(module: str) -> list[str]:
    """What a streams migration's cluster operation executes (recorded by a stand-in schema editor)."""
    migration = importlib.import_module(f"streams.migrations.{module}")
    executed: list[str] = []

    class Editor:
        connection = type("Connection", (), {"settings_dict": {"NAME": DB}})()

        def execute(self, statement: str) -> None:
            executed.append(statement)

    with override_settings(CLICKHOUSE_CLUSTER=CLUSTER):
        migration.cluster_apply(None, Editor())
    return executed


@pytest.fixture(scope="module")
def run(zookeeper: ZooKeeper, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Everything in one chdb process (a chdb start is seconds): tagged statements -> results."""
    root = tmp_path_factory.mktemp("chdb_cluster")
    cluster_ddl = warehouse.statements(CLUSTER, DB)
    tagged: list[tuple[str, str]] = [
        (f"parse:{i}", f"SELECT formatQuery({_literal(s)})") for i, s in enumerate(cluster_ddl)
    ]
    tagged.append(("parse:garbage", f"SELECT formatQuery({_literal(cluster_ddl[0] + ' ORDER BY')})"))
    tagged.append(("create_database", f"CREATE DATABASE IF NOT EXISTS {DB}"))
    tagged += [(f"apply:{i}", warehouse.without_on_cluster(s)) for i, s in enumerate(cluster_ddl)]
    tagged += [(f"reapply:{i}", warehouse.without_on_cluster(s)) for i, s in enumerate(cluster_ddl)]
    tagged.append(("tables", f"SELECT name, engine, engine_full FROM system.tables WHERE database = '{DB}'"))
    tagged.append(
        (
            "replicas",
            f"SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = '{DB}'",
        )
    )
    tagged.append(
        (
            "columns",
            f"SELECT table, name, type FROM system.columns WHERE database = '{DB}' ORDER BY table, position",
        )
    )
    for case, statements in _broken_cases().items():
        tagged += [(f"case:{case}:{i}", s) for i, s in enumerate(statements)]
    tagged += [(f"upgrade:{i}", s) for i, s in enumerate(_upgrade_statements())]
    operations = {number: _cluster_operation_statements(module) for number, module in CLUSTER_OPERATIONS.items()}
    for number, statements in operations.items():
        tagged += [(f"{number}:parse:{i}", f"SELECT formatQuery({_literal(s)})") for i, s in enumerate(statements)]
        # On a cluster 0006 built with this schema (above), twice: IF [NOT] EXISTS, a rerun completes.
        tagged += [(f"{number}:apply:{i}", warehouse.without_on_cluster(s)) for i, s in enumerate(statements * 2)]
        tagged.append((f"{number}:tables", f"SELECT name FROM system.tables WHERE database = '{DB}'"))
    tagged.append(
        (
            "upgrade:columns",
            f"SELECT table, name, type FROM system.columns WHERE database = '{DB}'"
            f" AND table LIKE '{UPGRADED}%' ORDER BY table, position",
        )
    )
    config = chdb_config(root / "config.xml", zookeeper)
    results = chdb_run(Path(root / "db"), config, [s for _, s in tagged])
    return {
        "ddl": cluster_ddl,
        "operations": operations,
        "results": dict(zip((tag for tag, _ in tagged), results, strict=True)),
        # chdb has no system.zookeeper: ask ZooKeeper itself what the tables registered.
        "registered": zk_ls(zookeeper, f"/clickhouse/tables/{SHARD}/{DB}"),
    }


def _ok(result: dict[str, Any]) -> Any:
    assert result["ok"], result["error"]
    return result["rows"]


def test_every_cluster_statement_parses_with_on_cluster(run: dict[str, Any]) -> None:
    for i, statement in enumerate(run["ddl"]):
        formatted = _ok(run["results"][f"parse:{i}"])[0][0]
        assert f"ON CLUSTER {CLUSTER}" in formatted, statement
    assert not run["results"]["parse:garbage"]["ok"]


def test_every_cluster_statement_runs_against_zookeeper(run: dict[str, Any]) -> None:
    for i, statement in enumerate(run["ddl"]):
        assert run["results"][f"apply:{i}"]["ok"], (statement, run["results"][f"apply:{i}"]["error"])
        assert run["results"][f"reapply:{i}"]["ok"], statement  # IF NOT EXISTS: a rerun completes, not fails
    engines = {name: (engine, full) for name, engine, full in _ok(run["results"]["tables"])}
    for table in warehouse.tables():
        engine, full = engines[table.name]
        assert engine == "Distributed", table.name
        assert full.startswith(f"Distributed('{CLUSTER}', '{DB}', '{table.local}'"), full
        assert engines[table.local][0] == "Replicated" + table.engine, table.local
    for view in warehouse.MATERIALIZED_VIEWS:
        assert engines[view.name][0] == "MaterializedView"
    replicas = {table: (path, replica) for table, path, replica in _ok(run["results"]["replicas"])}
    assert replicas == {t.local: (f"/clickhouse/tables/{SHARD}/{DB}/{t.local}", REPLICA) for t in warehouse.tables()}
    assert {t.local for t in warehouse.tables()} <= set(run["registered"])


@pytest.mark.parametrize("number", CLUSTER_OPERATIONS)
def test_a_migrations_cluster_operation_parses_and_reruns(run: dict[str, Any], number: str) -> None:
    statements = run["operations"][number]
    assert statements, f"{number}'s cluster operation executed nothing"
    for i, statement in enumerate(statements):
        assert f"ON CLUSTER {CLUSTER}" in _ok(run["results"][f"{number}:parse:{i}"])[0][0], statement
    for i, statement in enumerate(statements * 2):
        result = run["results"][f"{number}:apply:{i}"]
        assert result["ok"], (statement, result["error"])
    names = {row[0] for row in _ok(run["results"][f"{number}:tables"])}
    assert {t.name for t in warehouse.tables()} | {v.name for v in warehouse.MATERIALIZED_VIEWS} <= names


def test_0009_drops_the_rollups_it_replaces_on_a_cluster(run: dict[str, Any]) -> None:
    statements = run["operations"]["0009"]
    assert any(s.startswith("DROP TABLE IF EXISTS") and "`event_rollup_minute_local`" in s for s in statements)
    names = {row[0] for row in _ok(run["results"]["0009:tables"])}
    assert not names & {"event_rollup_minute", "event_rollup_hour_local", "events_to_event_rollup_minute"}


@pytest.mark.parametrize(
    ("number", "local", "view"),
    [
        ("0010", "event_dimension_hour_local", "events_to_event_dimension_hour"),
        ("0011", "view_dimension_hour_local", "view_summaries_to_view_dimension_hour"),
    ],
)
def test_the_pivot_migrations_create_their_replicated_table_and_view(
    run: dict[str, Any], number: str, local: str, view: str
) -> None:
    statements = run["operations"][number]
    assert any(f"`{local}`" in s and "ENGINE = ReplicatedSummingMergeTree(" in s for s in statements)
    assert any(s.startswith("CREATE MATERIALIZED VIEW") and f"`{view}`" in s for s in statements)


def test_distributed_tables_have_the_local_tables_columns(run: dict[str, Any]) -> None:
    columns: dict[str, list[tuple[str, str]]] = {}
    for table_name, name, kind in _ok(run["results"]["columns"]):
        columns.setdefault(table_name, []).append((name, kind))
    for table in warehouse.tables():
        assert columns[table.name] == columns[table.local] == list(table.columns), table.name


def test_the_0007_columns_reach_an_existing_cluster_table_and_its_distributed_table(run: dict[str, Any]) -> None:
    steps = [r for tag, r in run["results"].items() if tag.startswith("upgrade:") and tag != "upgrade:columns"]
    assert len(steps) == 8 and all(r["ok"] for r in steps), [
        (i, r["error"][:60]) for i, r in enumerate(steps) if not r["ok"]
    ]
    columns: dict[str, list[tuple[str, str]]] = {}
    for table_name, name, kind in _ok(run["results"]["upgrade:columns"]):
        columns.setdefault(table_name, []).append((name, kind))
    expected = list(warehouse.table_named(warehouse.VIEW_SUMMARIES).columns)
    assert columns == {UPGRADED: expected, UPGRADED + warehouse.LOCAL_SUFFIX: expected}


def test_sharding_keys_keep_a_kafka_partition_together(run: dict[str, Any]) -> None:
    engines = {name: full for name, _, full in _ok(run["results"]["tables"])}
    # The tables the sink writes: by Kafka partition (ingest partitions by user): a view's rows on one shard.
    written = (warehouse.EVENTS, warehouse.VIEW_SUMMARIES, warehouse.VIEW_MINUTES)
    for name in written:
        assert engines[name].endswith(", kafka_partition)"), engines[name]
    # Rollups: written by each shard's views only; no key, so a direct INSERT is refused.
    rollups = [t for t in warehouse.tables() if t.name not in written]
    assert rollups and all(engines[t.name].endswith(f"'{t.local}')") for t in rollups)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("version_missing", "no_such_column"),
        ("version_string", "version"),
        ("order_by_unknown", "no_such_column"),
        ("partition_unknown", "no_such_column"),
        ("sharding_unknown", "no_such_column"),
        ("macro_unknown", "no_such_macro"),
        ("view_column_unknown", "no_such_column"),
    ],
)
def test_a_broken_statement_fails_the_check(run: dict[str, Any], case: str, needle: str) -> None:
    results = [r for tag, r in run["results"].items() if tag.startswith(f"case:{case}:")]
    failed = [r for r in results if not r["ok"]]
    assert failed, f"{case}: every statement succeeded"
    assert needle.lower() in failed[0]["error"].lower(), failed[0]["error"]


def test_the_control_case_succeeds(run: dict[str, Any]) -> None:
    results = [r for tag, r in run["results"].items() if tag.startswith("case:control_version:")]
    assert len(results) == 2 and all(r["ok"] for r in results), results


def test_the_application_reads_and_writes_the_distributed_tables(run: dict[str, Any]) -> None:
    from etl.tables import EXPORT_TABLES
    from metrics.query import ROLLUPS, SOURCES
    from streams.sinks import _TABLES as SINK_TABLES

    engines = {name: engine for name, engine, _ in _ok(run["results"]["tables"])}
    read = {s.table for s in SOURCES.values()} | {r.table for r in ROLLUPS.values()}
    read |= {t.clickhouse_table for t in EXPORT_TABLES.values()}
    written = {t.name for t in SINK_TABLES}
    assert read >= {t.name for t in warehouse.tables()}  # every table serves a query
    for name in read | written:
        assert engines[name] == "Distributed", name
