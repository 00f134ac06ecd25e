"""streams 0010 adds ``event_dimension_hour`` (an event counted once per dimension): the events
already stored are counted into it once, never doubled by a rerun, and its view then counts new
inserts the same way (one dimension's rows sum to the events of each of its values)."""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import pytest

from analytics_platform import warehouse
from analytics_platform.clickhouse import client_get

# django_db: the test databases (and the session's ClickHouse server) exist even when run alone.
pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

DB = "migration_0010_dimension_hour"
migration = importlib.import_module("streams.migrations.0010_event_dimension_hour")
COLUMNS = ("event_id", "type", "ts", "late", "device", "os", "browser", "country", "cdn", "player")


@pytest.fixture
def scratch() -> Any:
    client = client_get()
    client.execute(f"DROP DATABASE IF EXISTS {DB}")
    client.execute(f"CREATE DATABASE {DB}")
    scoped = client_get(database=DB)
    try:
        events = warehouse.table_named(warehouse.EVENTS)
        scoped.execute(warehouse.statements(None, DB)[[t.name for t in warehouse.tables()].index(events.name)])
        yield scoped
    finally:
        scoped.disconnect()
        client.execute(f"DROP DATABASE IF EXISTS {DB}")
        client.disconnect()


def _insert(client: Any, rows: list[tuple[Any, ...]]) -> None:
    client.execute(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES", rows)


def _row(n: int, ts: str, kind: str, country: str, late: bool = False) -> tuple[Any, ...]:
    moment = dt.datetime.fromisoformat(ts).replace(tzinfo=dt.UTC)
    return (f"00000000-0000-0000-0000-{n:012d}", kind, moment, late, "tv", "ios", "chrome", country, "cdn-a", "web")


def _execute(client: Any):
    def execute(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        assert not params
        return client.execute(sql)

    return execute


def test_stored_events_are_counted_once_then_the_view_counts_new_ones(scratch) -> None:
    _insert(
        scratch,
        [_row(1, "2026-11-02 10:05:00", "error", "DE", late=True), _row(2, "2026-11-02 10:40:00", "error", "FR")],
    )
    _insert(scratch, [_row(3, "2026-11-02 11:00:00", "playing", "DE")])
    scratch.execute(migration.CREATE_TABLE)
    execute = _execute(scratch)

    # 3 events x 6 dimensions, grouped: device/os/browser/cdn/player 2 rows each (error, playing), country 3.
    assert migration.history_fill(execute) == 13
    assert migration.history_fill(execute) == 0  # a rerun: the table is no longer empty
    scratch.execute(migration.CREATE_VIEW)
    _insert(scratch, [_row(4, "2026-11-02 10:59:59", "error", "DE")])

    by_country = scratch.execute(
        "SELECT toString(bucket), type, value, sum(events), sum(late_events) FROM event_dimension_hour"
        " WHERE dimension = 'country' GROUP BY bucket, type, value ORDER BY bucket, type, value"
    )
    assert by_country == [
        ("2026-11-02 10:00:00", "error", "DE", 2, 1),
        ("2026-11-02 10:00:00", "error", "FR", 1, 0),
        ("2026-11-02 11:00:00", "playing", "DE", 1, 0),
    ]
    # Every dimension counts every event once: its sums are the table's count.
    per_dimension = scratch.execute(
        "SELECT dimension, sum(events) FROM event_dimension_hour GROUP BY dimension ORDER BY dimension"
    )
    assert per_dimension == [(dim, 4) for dim in sorted(("device", "os", "browser", "country", "cdn", "player"))]


def test_the_migration_builds_what_the_schema_module_declares(scratch) -> None:
    """The migration's constants are the schema of its time; ``warehouse`` must describe the same."""
    scratch.execute(migration.CREATE_TABLE)
    scratch.execute(migration.CREATE_VIEW)
    declared = [s for s in warehouse.statements(None, DB) if "event_dimension_hour" in s]
    built = [
        row[0]
        for row in scratch.execute(
            "SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name LIKE %(like)s ORDER BY name",
            {"db": DB, "like": "%event_dimension_hour"},
        )
    ]
    scratch.execute(f"CREATE DATABASE IF NOT EXISTS {DB}_declared")
    try:
        other = client_get(database=f"{DB}_declared")
        try:
            other.execute(warehouse.statements(None, f"{DB}_declared")[0])  # events, the view's source
            for statement in declared:
                other.execute(statement.replace(f"`{DB}`", f"`{DB}_declared`"))
            expected = [
                row[0].replace(f"{DB}_declared", DB)
                for row in other.execute(
                    "SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name LIKE %(like)s"
                    " ORDER BY name",
                    {"db": f"{DB}_declared", "like": "%event_dimension_hour"},
                )
            ]
        finally:
            other.disconnect()
    finally:
        scratch.execute(f"DROP DATABASE IF EXISTS {DB}_declared")
    assert len(built) == 2 and built == expected
