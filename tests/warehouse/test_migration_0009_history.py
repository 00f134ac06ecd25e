"""streams 0009 drops ``event_rollup_hour`` (400 days): a video's event counts past the 90 days of
``events`` are copied into the new ``event_video_hour`` first, once, and never doubled by a rerun."""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import pytest

from analytics_platform import warehouse
from analytics_platform.clickhouse import client_get

# django_db: the test databases (and the session's ClickHouse server) exist even when run alone.
pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

DB = "migration_0009_history"
migration = importlib.import_module("streams.migrations.0009_fewer_rollups")

# The dropped rollup as streams 0002/0004 built it (test data: the schema no longer has it).
OLD_ROLLUP = (
    "CREATE TABLE event_rollup_hour (bucket DateTime('UTC'), type LowCardinality(String), video_id String,"
    " country LowCardinality(String), device LowCardinality(String), os LowCardinality(String),"
    " browser LowCardinality(String), cdn LowCardinality(String), player LowCardinality(String),"
    " events UInt64, late_events UInt64) ENGINE = SummingMergeTree"
    " ORDER BY (bucket, type, video_id, country, device, os, browser, cdn, player)"
)


@pytest.fixture
def scratch() -> Any:
    client = client_get()
    client.execute(f"DROP DATABASE IF EXISTS {DB}")
    client.execute(f"CREATE DATABASE {DB}")
    scoped = client_get(database=DB)
    try:
        yield scoped
    finally:
        scoped.disconnect()
        client.execute(f"DROP DATABASE IF EXISTS {DB}")
        client.disconnect()


def _execute(client: Any):
    def execute(sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        if params:  # the migration's only parameter is the database name
            sql = sql.replace("%s", "%(p0)s")
            return client.execute(sql, {"p0": params[0]})
        return client.execute(sql)

    return execute


def test_history_of_the_dropped_hour_rollup_is_kept_once(scratch) -> None:
    scratch.execute(OLD_ROLLUP)
    scratch.execute(migration.CREATE[0])
    rows = [
        # 200 days ago (past the raw retention), two dimension combinations of one key, and another key.
        ("2026-05-18 10:00:00", "error", "v1", "DE", "phone", 3, 1),
        ("2026-05-18 10:00:00", "error", "v1", "FR", "tv", 4, 0),
        ("2026-05-18 11:00:00", "playing", "v2", "DE", "phone", 7, 2),
    ]
    scratch.execute(
        "INSERT INTO event_rollup_hour (bucket, type, video_id, country, device, events, late_events) VALUES",
        [(dt.datetime.fromisoformat(b), t, v, c, d, n, late) for b, t, v, c, d, n, late in rows],
    )
    execute = _execute(scratch)

    assert migration.history_copy(execute, DB) == 2
    assert migration.history_copy(execute, DB) == 0  # a rerun: the table is no longer empty
    got = scratch.execute(
        "SELECT toString(bucket), type, video_id, sum(events), sum(late_events) FROM event_video_hour"
        " GROUP BY bucket, type, video_id ORDER BY bucket"
    )
    assert got == [("2026-05-18 10:00:00", "error", "v1", 7, 1), ("2026-05-18 11:00:00", "playing", "v2", 7, 2)]
    # The copy's target is the table the schema module declares.
    assert warehouse.table_named(warehouse.EVENT_VIDEO_HOUR).name == "event_video_hour"


def test_a_database_without_the_old_rollup_copies_nothing(scratch) -> None:
    scratch.execute(migration.CREATE[0])
    assert migration.history_copy(_execute(scratch), DB) == 0
