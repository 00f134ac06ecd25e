"""streams 0011 adds ``view_dimension_hour`` (a view counted once per dimension and for its video):
the views already stored are summed into it once (``FINAL``: a replayed duplicate row counts once),
never doubled by a rerun, and its view then sums new inserts the same way."""

from __future__ import annotations

import datetime as dt
import importlib
from typing import Any

import pytest

from analytics_platform import warehouse
from analytics_platform.clickhouse import client_get

# django_db: the test databases (and the session's ClickHouse server) exist even when run alone.
pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

DB = "migration_0011_view_dimension_hour"
migration = importlib.import_module("streams.migrations.0011_view_dimension_hour")
COLUMNS = ("session_id", "video_id", "start_ts", "has_view_start", "started", "watch_time_ms", "country", "device")


@pytest.fixture
def scratch() -> Any:
    client = client_get()
    client.execute(f"DROP DATABASE IF EXISTS {DB}")
    client.execute(f"CREATE DATABASE {DB}")
    scoped = client_get(database=DB)
    try:
        names = [t.name for t in warehouse.tables()]
        scoped.execute(warehouse.statements(None, DB)[names.index(warehouse.VIEW_SUMMARIES)])
        yield scoped
    finally:
        scoped.disconnect()
        client.execute(f"DROP DATABASE IF EXISTS {DB}")
        client.disconnect()


def _insert(client: Any, rows: list[tuple[Any, ...]]) -> None:
    client.execute(f"INSERT INTO view_summaries ({', '.join(COLUMNS)}) VALUES", rows)


def _view(session: str, video: str, ts: str, country: str, watch_ms: int) -> tuple[Any, ...]:
    start = dt.datetime.fromisoformat(ts).replace(tzinfo=dt.UTC)
    return (session, video, start, True, watch_ms > 0, watch_ms, country, "tv")


def test_stored_views_are_summed_once_then_the_view_sums_new_ones(scratch) -> None:
    _insert(
        scratch,
        [_view("s1", "v1", "2026-11-02 10:05:00", "DE", 1000), _view("s2", "v2", "2026-11-02 10:40:00", "FR", 0)],
    )
    _insert(scratch, [_view("s1", "v1", "2026-11-02 10:05:00", "DE", 1000)])  # a replayed row: same key
    scratch.execute(migration.CREATE_TABLE)
    execute = lambda sql, params: scratch.execute(sql)  # noqa: E731 - the migration passes no parameters

    # 2 views (FINAL) x 7 dimensions: video 2 rows, country 2, device/os/browser/cdn/player 1 each.
    assert migration.history_fill(execute) == 9
    assert migration.history_fill(execute) == 0  # a rerun: the table is no longer empty
    scratch.execute(migration.CREATE_VIEW)
    _insert(scratch, [_view("s3", "v1", "2026-11-02 11:59:59", "DE", 500)])

    by_video = scratch.execute(
        "SELECT toString(bucket), value, sum(views), sum(started_views), sum(watch_time_ms) FROM view_dimension_hour"
        " WHERE dimension = 'video_id' GROUP BY bucket, value ORDER BY bucket, value"
    )
    assert by_video == [
        ("2026-11-02 10:00:00", "v1", 1, 1, 1000),
        ("2026-11-02 10:00:00", "v2", 1, 0, 0),
        ("2026-11-02 11:00:00", "v1", 1, 1, 500),
    ]
    per_dimension = scratch.execute(
        "SELECT dimension, sum(views) FROM view_dimension_hour GROUP BY dimension ORDER BY dimension"
    )
    assert per_dimension == [
        (d, 3) for d in sorted(("video_id", "device", "os", "browser", "country", "cdn", "player"))
    ]


def test_the_migration_builds_what_the_schema_module_declares(scratch) -> None:
    scratch.execute(migration.CREATE_TABLE)
    scratch.execute(migration.CREATE_VIEW)
    declared = {
        s.replace(f"`{DB}`.", "").replace("`", "") for s in warehouse.statements(None, DB) if "view_dimension_hour" in s
    }
    built = {
        row[0].replace(f"{DB}.", "")
        for row in scratch.execute(
            "SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name LIKE %(like)s",
            {"db": DB, "like": "%view_dimension_hour"},
        )
    }
    # The server's normal form differs from ours in spelling only; compare what it builds from each.
    assert len(built) == 2
    scratch.execute("DROP VIEW view_summaries_to_view_dimension_hour")
    scratch.execute("DROP TABLE view_dimension_hour")
    for statement in sorted(declared, key=lambda s: "MATERIALIZED" in s):
        scratch.execute(statement)
    rebuilt = {
        row[0].replace(f"{DB}.", "")
        for row in scratch.execute(
            "SELECT create_table_query FROM system.tables WHERE database = %(db)s AND name LIKE %(like)s",
            {"db": DB, "like": "%view_dimension_hour"},
        )
    }
    assert rebuilt == built
