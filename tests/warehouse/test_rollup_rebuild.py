"""``manage.py clickhouse_rollups_rebuild`` against the session's real ClickHouse server.

The truth is what the materialized views themselves wrote: the raw rows are inserted into
``events`` / ``view_summaries`` with every view attached, each rollup's contents are read back
(summed per key, as every query reads them), then rollups are damaged and the command must
restore exactly those contents.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections
from django.test import override_settings
from django.utils import timezone

from analytics_platform import rollup_rebuild, warehouse
from analytics_platform.clickhouse import client_get
from analytics_platform.models import RollupPartitionRebuild
from etl.models import PartitionLease
from tests.clickhouse_tables import truncate_all
from tests.metrics import data as gen

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

Contents = dict[str, list[tuple[Any, ...]]]


def _contents(client: Any, name: str) -> list[tuple[Any, ...]]:
    """A rollup as queries see it: values summed per key, keys whose sums are all 0 left out
    (SummingMergeTree drops those rows when it merges)."""
    table = warehouse.table_named(name)
    keys = [column for column in table.column_names if column in table.order_by]
    values = [column for column in table.column_names if column not in table.order_by]
    sums = ", ".join(f"sum(`{v}`) AS `{v}`" for v in values)
    nonzero = " OR ".join(f"`{v}` != 0" for v in values)
    key_list = ", ".join(f"`{k}`" for k in keys)
    return client.execute(
        f"SELECT {key_list}, {sums} FROM `{name}` GROUP BY {key_list} HAVING {nonzero} ORDER BY {key_list}"
    )


def _all(client: Any) -> Contents:
    return {name: _contents(client, name) for name in warehouse.rollup_names()}


def _base() -> datetime:
    # Five whole days ending at today's midnight: inside every rollup's retention (they cross a
    # month boundary in the first days of a month; test_partition_spans covers the arithmetic).
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=5)


@pytest.fixture
def client() -> Iterator[Any]:
    client = client_get()
    truncate_all(client)
    yield client
    truncate_all(client)  # the metrics tests reload their own data set when counts differ
    client.disconnect()


@pytest.fixture
def fed(client: Any) -> Contents:
    """The data set inserted through the views; returns what the views wrote."""
    # Not older: a minute rollup's TTL (30 days) could drop a part of the views' output meanwhile.
    dataset = gen.generate(base=_base(), n_views=400, days=5, seed=11)
    gen.insert(client, dataset)
    contents = _all(client)
    assert all(contents.values()), {name: len(rows) for name, rows in contents.items()}
    return contents


def _damage(client: Any) -> datetime:
    client.execute(f"TRUNCATE TABLE `{warehouse.METRICS_EVENT_TYPE_MINUTE}`")
    client.execute(f"TRUNCATE TABLE `{warehouse.VIEW_ROLLUP_HOUR}`")
    # Doubled rows (a replayed insert) and a partition whose sources hold nothing at all.
    client.execute(f"INSERT INTO `{warehouse.METRICS_VIEW_MINUTE}` SELECT * FROM `{warehouse.METRICS_VIEW_MINUTE}`")
    stray = (datetime.now(UTC) - timedelta(days=60)).replace(minute=0, second=0, microsecond=0)
    client.execute(
        f"INSERT INTO `{warehouse.METRICS_EVENT_TYPE_HOUR}` (bucket, type, events, late_events) VALUES",
        [(stray, "play", 5, 0)],
    )
    return stray


def _run(*args: str) -> str:
    out = StringIO()
    quiet = () if "--quiet-seconds" in args else ("--quiet-seconds", "0")  # no writers but the test
    call_command("clickhouse_rollups_rebuild", *args, *quiet, "--no-progress", stdout=out, stderr=StringIO())
    return out.getvalue()


def _staging_tables(client: Any) -> list[str]:
    return [
        row[0]
        for row in client.execute(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND endsWith(name, %(s)s)",
            {"s": rollup_rebuild.STAGING_SUFFIX},
        )
    ]


def test_rebuild_restores_what_the_views_wrote(client: Any, fed: Contents) -> None:
    stray = _damage(client)
    assert _all(client) != fed
    out = _run("--include-live")
    assert _all(client) == fed
    assert _staging_tables(client) == []
    recorded = RollupPartitionRebuild.objects.count()
    assert recorded > len(warehouse.rollup_names())
    assert f"{recorded} partition(s) rebuilt" in out
    # The partition that only the damaged rollup held is gone, not kept.
    table = warehouse.METRICS_EVENT_TYPE_HOUR
    assert client.execute(f"SELECT count() FROM `{table}` WHERE bucket = %(b)s", {"b": stray}) == [(0,)]


def test_a_rerun_skips_done_partitions_and_force_gives_the_same_rollups(client: Any, fed: Contents) -> None:
    stray = (warehouse.METRICS_EVENT_TYPE_HOUR, _damage(client).strftime("%Y%m"))
    _run("--include-live")
    first = {(r.table, r.partition): r.rebuilt_at for r in RollupPartitionRebuild.objects.all()}
    again = _run("--include-live")
    # The stray partition was dropped: nothing holds rows for it any more, so it is not listed.
    assert "0 partition(s) to rebuild" in again and f"skipped: {len(first) - 1} done before" in again
    assert {(r.table, r.partition): r.rebuilt_at for r in RollupPartitionRebuild.objects.all()} == first
    progress = StringIO()  # not a terminal: one line per partition instead of a bar
    call_command(
        "clickhouse_rollups_rebuild",
        "--include-live",
        "--force",
        "--quiet-seconds",
        "0",
        stdout=StringIO(),
        stderr=progress,
    )
    lines = progress.getvalue().splitlines()
    assert len(lines) == len(first) - 1 and "\r" not in progress.getvalue()
    assert all(" rows in " in line and line.endswith("attempts 1") for line in lines), lines[:3]
    assert _all(client) == fed
    again_at = {(r.table, r.partition): r.rebuilt_at for r in RollupPartitionRebuild.objects.all()}
    assert again_at[stray] == first[stray]
    assert all(at > first[key] for key, at in again_at.items() if key != stray)


def test_an_interrupted_rebuild_resumes_where_it_stopped(client: Any, fed: Contents) -> None:
    _damage(client)
    out = _run("--include-live", "--max-partitions", "3")
    assert "3 partition(s) rebuilt" in out and "left: run the same command again" in out
    done = {(r.table, r.partition): r.rebuilt_at for r in RollupPartitionRebuild.objects.all()}
    assert len(done) == 3
    assert _all(client) != fed

    # A crash in the middle (here: in the progress callback, after the 2nd further partition).
    seen: list[str] = []

    def crash(result: rollup_rebuild.PartitionResult) -> None:
        seen.append(result.plan.partition)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rollup_rebuild.rollups_rebuild(include_live=True, quiet_seconds=0, on_partition=crash)
    assert _staging_tables(client) == []
    assert RollupPartitionRebuild.objects.count() == 5

    out = _run("--include-live")
    assert "skipped: 5 done before" in out
    assert _all(client) == fed
    # The first three were not rebuilt again.
    for row in RollupPartitionRebuild.objects.filter(table__in=[t for t, _ in done]):
        if (row.table, row.partition) in done:
            assert row.rebuilt_at == done[(row.table, row.partition)]


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "clickhouse"], transaction=True)
def test_a_killed_command_resumes_where_it_stopped(client: Any, fed: Contents, tmp_path: Any) -> None:
    """The real command in its own process, killed with SIGKILL in the middle of the run."""
    default = connections["default"].settings_dict
    if default["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail("the command process shares the test database: PostgreSQL only (DATABASE_URL)")
    ch = connections["clickhouse"].settings_dict
    env = {
        **os.environ,
        "PYTHONPATH": str(settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"postgres://{default['USER']}:{default['PASSWORD'] or ''}@{default['HOST'] or '127.0.0.1'}:"
        f"{default['PORT'] or 5432}/{default['NAME']}",
        "DATABASE_CONN_MAX_AGE": "0",
        "CLICKHOUSE_HOST": str(ch["HOST"]),
        "CLICKHOUSE_PORT": str(ch["PORT"]),
        "CLICKHOUSE_DATABASE": str(ch["NAME"]),
        "CLICKHOUSE_PASSWORD": str(ch["PASSWORD"]),
        "LOG_LEVEL": "WARNING",
        # The killed run's lease blocks the rerun that long after its last renewal: long enough
        # that a loaded machine (CI, 2 cores) reaches the rerun below before it expires (3 s did not).
        "CLICKHOUSE_REBUILD_LEASE_SECONDS": "15",
    }
    _damage(client)
    command = [sys.executable, "manage.py", "clickhouse_rollups_rebuild", "--include-live", "--quiet-seconds", "0"]
    process = subprocess.Popen(command, env=env, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # Killed inside a table's run (its lease held) after some partitions: a kill between two
        # tables would leave no lease to find, which the partition count alone does not rule out
        # (a monthly rollup of these three days is one partition).
        held = PartitionLease.objects.filter(key__startswith="clickhouse_rollups_rebuild/").exclude(owner="")
        while RollupPartitionRebuild.objects.count() < 2 or not held.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    with pytest.raises(CommandError, match="if it was killed, 60 s for its lease to expire"):
        _run("--include-live")
    done = {(r.table, r.partition): r.rebuilt_at for r in RollupPartitionRebuild.objects.all()}
    assert _all(client) != fed, "killed after the last partition: the run was too short to interrupt"
    leases = PartitionLease.objects.filter(key__startswith="clickhouse_rollups_rebuild/").exclude(owner="")
    expiry = max(lease.expires_at for lease in leases if lease.expires_at is not None)
    time.sleep(max(0.0, (expiry - timezone.now()).total_seconds()) + 0.2)
    out = _run("--include-live")
    assert f"skipped: {len(done)} done before" in out
    assert _all(client) == fed
    assert _staging_tables(client) == []  # the killed run's staging table was replaced, then dropped
    for row in RollupPartitionRebuild.objects.all():
        assert done.get((row.table, row.partition), row.rebuilt_at) == row.rebuilt_at


def test_live_partitions_are_left_alone_by_default(client: Any, fed: Contents) -> None:
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    live = gen.generate(base=today, n_views=10, days=1, seed=13)
    gen.insert(client, live)
    client.execute(f"TRUNCATE TABLE `{warehouse.METRICS_EVENT_TYPE_MINUTE}`")
    out = _run("--table", warehouse.METRICS_EVENT_TYPE_MINUTE, "--settle-hours", "0")
    assert "skipped: 0 done before, 1 live" in out
    minute = warehouse.METRICS_EVENT_TYPE_MINUTE
    rebuilt = dict(client.execute(f"SELECT toDate(bucket) AS day, sum(events) FROM `{minute}` GROUP BY day"))
    raw = dict(client.execute("SELECT toDate(ts) AS day, count() FROM events GROUP BY day"))
    assert today.date() not in rebuilt and raw[today.date()] > 0
    assert rebuilt == {day: count for day, count in raw.items() if day != today.date()}


def test_partitions_older_than_the_raw_retention_are_kept(client: Any, fed: Contents) -> None:
    old = (datetime.now(UTC) - timedelta(days=warehouse.retention_days(warehouse.table_named("events")) + 40)).replace(
        minute=0, second=0, microsecond=0
    )
    client.execute(
        f"INSERT INTO `{warehouse.METRICS_EVENT_TYPE_HOUR}` (bucket, type, events, late_events) VALUES",
        [(old, "play", 7, 0)],
    )
    out = _run("--include-live", "--table", warehouse.METRICS_EVENT_TYPE_HOUR)
    assert "1 older than the raw tables' retention" in out
    assert client.execute(
        f"SELECT sum(events) FROM `{warehouse.METRICS_EVENT_TYPE_HOUR}` WHERE bucket = %(b)s", {"b": old}
    ) == [(7,)]
    assert _contents(client, warehouse.METRICS_EVENT_TYPE_HOUR) == sorted(
        [*fed[warehouse.METRICS_EVENT_TYPE_HOUR], (old, "play", 7, 0)]
    )


def test_dry_run_prints_statements_that_parse_and_changes_nothing(client: Any, fed: Contents) -> None:
    _damage(client)
    damaged = _all(client)
    out = _run("--include-live", "--dry-run", "--table", warehouse.VIEW_ROLLUP_HOUR)
    statements = [line[:-1] for line in out.splitlines() if line.endswith(";")]
    assert any("REPLACE PARTITION" in s for s in statements)
    assert any(s.startswith("INSERT INTO") and "FINAL" in s for s in statements)
    for statement in statements:
        formatted = client.execute("SELECT formatQuery(%(q)s)", {"q": statement})[0][0]
        assert formatted
    assert _all(client) == damaged
    assert RollupPartitionRebuild.objects.count() == 0


def test_rows_inserted_during_a_rebuild_are_counted_once(client: Any, fed: Contents) -> None:
    """Late rows keep arriving (through the views) while every partition is rebuilt."""
    stop = threading.Event()
    late = gen.generate(base=_base(), n_views=60, days=5, seed=14)
    batches = [late.events[i : i + 40] for i in range(0, len(late.events), 40)]

    def writer() -> None:
        extra = client_get()
        try:
            for batch in batches:
                if stop.is_set():
                    break
                extra.execute(
                    f"INSERT INTO events ({', '.join(gen.EVENT_COLUMNS)}) VALUES",
                    [tuple(e[c] for c in gen.EVENT_COLUMNS) for e in batch],
                )
                time.sleep(0.05)
        finally:
            extra.disconnect()

    client.execute(f"TRUNCATE TABLE `{warehouse.METRICS_EVENT_TYPE_MINUTE}`")
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        out = _run(
            "--include-live",
            "--quiet-seconds",
            "1",
            "--table",
            warehouse.METRICS_EVENT_TYPE_MINUTE,
            "--table",
            warehouse.EVENT_VIDEO_HOUR,
        )
    finally:
        stop.set()
        thread.join()
    assert "partition(s) rebuilt" in out
    # Truth: the raw rows now stored, each counted once.
    raw = dict(client.execute("SELECT toStartOfHour(ts) AS h, count() FROM events GROUP BY h"))
    for name in (warehouse.METRICS_EVENT_TYPE_MINUTE, warehouse.EVENT_VIDEO_HOUR):
        hourly = dict(client.execute(f"SELECT toStartOfHour(bucket) AS h, sum(events) FROM `{name}` GROUP BY h"))
        assert {h.replace(tzinfo=None): n for h, n in hourly.items()} == {
            h.replace(tzinfo=None): n for h, n in raw.items()
        }, name


def test_refusals(client: Any) -> None:
    with pytest.raises(CommandError, match="not a rollup: events"):
        _run("--table", "events")
    with pytest.raises(CommandError, match="--to is before --from"):
        _run("--from", "2026-12-02", "--to", "2026-12-01")
    with override_settings(CLICKHOUSE_CLUSTER="analytics"), pytest.raises(CommandError, match="cluster mode"):
        _run()


def test_every_rollup_can_be_derived_from_raw_tables() -> None:
    for name in warehouse.rollup_names():
        assert set(warehouse.raw_sources(name)) <= {warehouse.EVENTS, warehouse.VIEW_SUMMARIES}
        warehouse.partitioning(warehouse.table_named(name))
        warehouse.retention_days(warehouse.table_named(name))


def test_partition_spans() -> None:
    daily = warehouse.partitioning(warehouse.table_named(warehouse.METRICS_EVENT_TYPE_MINUTE))
    monthly = warehouse.partitioning(warehouse.table_named(warehouse.EVENT_VIDEO_HOUR))
    assert (daily.column, daily.daily, monthly.daily) == ("bucket", True, False)
    assert daily.partition_id(date(2026, 12, 31)) == "20261231"
    assert daily.span(date(2026, 12, 31)) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert monthly.partition_id(date(2026, 12, 31)) == "202612"
    assert monthly.span(date(2026, 12, 5)) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert monthly.span(date(2028, 2, 29)) == (datetime(2028, 2, 1, tzinfo=UTC), datetime(2028, 3, 1, tzinfo=UTC))
    events = warehouse.partitioning(warehouse.table_named(warehouse.EVENTS))
    assert (events.column, events.daily) == ("ts", True)
    with pytest.raises(ValueError, match="not the UTC day or month"):
        warehouse.partitioning(warehouse.Table("t", (), "MergeTree", (), "toStartOfWeek(ts)", "", ""))


def test_a_partition_rebuilt_under_another_definition_is_rebuilt_again(client: Any, fed: Contents) -> None:
    _run("--include-live", "--table", warehouse.VIEW_ROLLUP_HOUR)
    assert RollupPartitionRebuild.objects.filter(table=warehouse.VIEW_ROLLUP_HOUR).count() >= 1
    stale = RollupPartitionRebuild.objects.filter(table=warehouse.VIEW_ROLLUP_HOUR).first()
    assert stale is not None
    RollupPartitionRebuild.objects.filter(pk=stale.pk).update(definition="0" * 64)  # as after a schema change
    out = _run("--include-live", "--table", warehouse.VIEW_ROLLUP_HOUR)
    assert out.startswith("1 partition(s) to rebuild")
    refreshed = RollupPartitionRebuild.objects.get(pk=stale.pk)
    assert refreshed.definition == warehouse.rollup_definition(warehouse.VIEW_ROLLUP_HOUR)
    assert _all(client) == fed


def test_wild_date_bounds_are_clamped_to_what_can_hold_rows(client: Any, fed: Contents) -> None:
    began = time.monotonic()
    wide = _run("--include-live", "--dry-run", "--from", "0001-01-01", "--to", "9999-12-31")
    assert time.monotonic() - began < 30
    assert wide == _run("--include-live", "--dry-run")
    assert RollupPartitionRebuild.objects.count() == 0
