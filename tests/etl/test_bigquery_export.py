"""Exports into the BigQuery emulator through the real google-cloud-bigquery client."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command

from etl.models import ExportRun
from etl.services import partition_export

from .conftest import past_day
from .data import bigquery_per_video, bigquery_scalar, clickhouse_per_video, events_insert, views_insert

pytestmark = [
    pytest.mark.bigquery,
    pytest.mark.clickhouse,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]


def test_a_day_lands_in_bigquery_with_clickhouse_counts_and_sums(clickhouse, bigquery_settings, bigquery_client):
    day = past_day(10)
    expected_events = events_insert(clickhouse, day=day, count=5000, seed=1)
    expected_views = views_insert(clickhouse, day=day, count=800, seed=2)

    events_run = partition_export(table="events", day=day)
    views_run = partition_export(table="view_summaries", day=day)

    assert clickhouse_per_video(clickhouse, table="events", day=day) == expected_events
    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=day) == expected_events
    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="view_summaries", day=day) == (
        clickhouse_per_video(clickhouse, table="view_summaries", day=day)
    )
    assert clickhouse_per_video(clickhouse, table="view_summaries", day=day) == expected_views
    # Neither neighbour row (1 ms before, exactly at the next midnight) came along.
    total = bigquery_scalar(bigquery_client, f"SELECT COUNT(*) FROM `{bigquery_settings}.events`")
    assert total == 5000
    for run, rows in ((events_run, 5000), (views_run, 800)):
        run.refresh_from_db()
        assert run.status == ExportRun.Status.SUCCEEDED
        assert run.rows == rows
        assert run.bytes > 0
        assert run.duration_seconds is not None and run.duration_seconds > 0
        assert run.destination.startswith("bigquery:etl-test.")
    table = bigquery_client.get_table(f"{bigquery_settings}.events")
    assert table.time_partitioning.type_ == "DAY"
    assert table.time_partitioning.field == "ts"
    types = {field.name: (field.field_type, field.mode) for field in table.schema}
    assert types["ts"] == ("TIMESTAMP", "REQUIRED")
    assert types["event_id"] == ("STRING", "REQUIRED")
    assert types["position_ms"] == ("INTEGER", "NULLABLE") or types["position_ms"] == ("INT64", "NULLABLE")
    assert types["fatal"][0] in {"BOOL", "BOOLEAN"}


def test_running_a_day_again_replaces_it_without_duplicates(clickhouse, bigquery_settings, bigquery_client):
    day, neighbour = past_day(20), past_day(22)  # not adjacent: each insert adds rows at its edges
    events_insert(clickhouse, day=day, count=3000, seed=3)
    neighbour_sums = events_insert(clickhouse, day=neighbour, count=1000, seed=4)
    partition_export(table="events", day=neighbour)
    partition_export(table="events", day=day)
    partition_export(table="events", day=day)  # the same data again: nothing doubles

    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=day) == (
        clickhouse_per_video(clickhouse, table="events", day=day)
    )
    # Late events reach ClickHouse; the re-export makes BigQuery's day equal ClickHouse's again.
    events_insert(clickhouse, day=day, count=500, seed=5)
    partition_export(table="events", day=day)
    expected = clickhouse_per_video(clickhouse, table="events", day=day)
    assert sum(n for n, _ in expected.values()) == 3500
    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=day) == expected
    distinct = bigquery_scalar(
        bigquery_client,
        f"SELECT COUNT(*) - COUNT(DISTINCT event_id) FROM `{bigquery_settings}.events` WHERE DATE(ts) = '{day}'",
    )
    assert distinct == 0
    # The other day's partition was not touched by the replacements.
    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=neighbour) == (
        neighbour_sums
    )
    assert ExportRun.objects.filter(table="events", day=day, status=ExportRun.Status.SUCCEEDED).count() == 3


def test_hourly_exports_then_the_day_leave_one_copy(clickhouse, bigquery_settings, bigquery_client):
    day = past_day(25)
    events_insert(clickhouse, day=day, count=2000, seed=6)
    for hour in (0, 5, 23, 5):  # hour 5 twice: replaced, not appended
        partition_export(table="events", day=day, hour=hour)
    hourly = bigquery_scalar(bigquery_client, f"SELECT COUNT(*) FROM `{bigquery_settings}.events`")
    in_hours = clickhouse.execute(
        "SELECT count() FROM events WHERE toDate(ts, 'UTC') = %(day)s AND toHour(ts, 'UTC') IN (0, 5, 23)",
        {"day": day},
    )[0][0]
    assert hourly == in_hours
    partition_export(table="events", day=day)
    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=day) == (
        clickhouse_per_video(clickhouse, table="events", day=day)
    )


def test_backfill_command_exports_several_days_resumes_and_dry_runs(
    clickhouse, bigquery_settings, bigquery_client, capsys
):
    days = [past_day(30 + offset) for offset in range(4)]  # newest first
    first, last = days[-1], days[0]
    for seed, day in enumerate(days):
        events_insert(clickhouse, day=day, count=700 + seed * 100, seed=10 + seed, neighbours=False)
        views_insert(clickhouse, day=day, count=100, seed=20 + seed)

    call_command("export_bigquery", "--from", str(first), "--to", str(last), "--dry-run", "--no-progress")
    out = capsys.readouterr().out
    assert "8 partition(s) to count" in out
    assert f"events {days[1]}: 800 rows" in out
    assert not _dataset_exists(bigquery_client, bigquery_settings)  # a dry run touches nothing
    assert ExportRun.objects.filter(status=ExportRun.Status.DRY_RUN).count() == 8

    # An earlier, interrupted backfill already did one partition: it is not exported again.
    partition_export(table="events", day=days[2])
    call_command("export_bigquery", "--from", str(first), "--to", str(last), "--no-progress")
    out = capsys.readouterr().out
    assert "7 partition(s) to export" in out
    for day in days:
        for table in ("events", "view_summaries"):
            assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table=table, day=day) == (
                clickhouse_per_video(clickhouse, table=table, day=day)
            ), (table, day)
    assert ExportRun.objects.filter(table="events", day=days[2], status=ExportRun.Status.SUCCEEDED).count() == 1

    call_command("export_bigquery", "--from", str(first), "--to", str(last), "--no-progress")
    assert "0 partition(s) to export" in capsys.readouterr().out
    call_command(
        "export_bigquery", "--from", str(days[1]), "--to", str(days[1]), "--table", "events", "--force", "--no-progress"
    )
    assert "1 partition(s) to export" in capsys.readouterr().out
    total = bigquery_scalar(bigquery_client, f"SELECT COUNT(*) FROM `{bigquery_settings}.events`")
    assert total == sum(700 + seed * 100 for seed in range(4))


def _dataset_exists(client, dataset: str) -> bool:
    from google.api_core.exceptions import NotFound

    try:
        client.get_dataset(dataset)
    except NotFound:
        return False
    return True


def test_open_day_is_refused(clickhouse, bigquery_settings, capsys):
    from etl.services import PartitionNotClosed

    today = dt.datetime.now(dt.UTC).date()
    with pytest.raises(PartitionNotClosed):
        partition_export(table="events", day=today)
    call_command("export_bigquery", "--from", str(today), "--to", str(today), "--dry-run", "--no-progress")
    out = capsys.readouterr().out
    assert "2 partition(s) not closed yet, left out" in out
    assert "0 partition(s) to count" in out


def test_a_column_added_in_clickhouse_widens_the_bigquery_table(clickhouse, bigquery_settings, bigquery_client):
    old_day, new_day = past_day(60), past_day(59)
    events_insert(clickhouse, day=old_day, count=50, seed=60, neighbours=False)
    partition_export(table="events", day=old_day)
    # What a later ClickHouse migration does (streams adds columns this way).
    clickhouse.execute("ALTER TABLE events ADD COLUMN etl_test_note String DEFAULT 'noted'")
    try:
        events_insert(clickhouse, day=new_day, count=50, seed=61, neighbours=False)
        partition_export(table="events", day=new_day)
        partition_export(table="events", day=new_day)  # ADD COLUMN IF NOT EXISTS is repeatable
        # (bqemulator applies the DDL to its storage but does not show the column in tables.get,
        # so the proof is a query.)
        rows = bigquery_client.query(
            f"SELECT DATE(ts) AS day, etl_test_note AS note, COUNT(*) AS n FROM `{bigquery_settings}.events` "
            "GROUP BY 1, 2 ORDER BY 1"
        ).result()
        assert [(row["day"], row["note"], row["n"]) for row in rows] == [(old_day, None, 50), (new_day, "noted", 50)]
    finally:
        clickhouse.execute("ALTER TABLE events DROP COLUMN etl_test_note")


def test_a_staging_table_left_by_a_killed_attempt_is_dropped_and_never_reused(
    clickhouse, bigquery_settings, bigquery_client
):
    from google.cloud import bigquery

    day, other = past_day(24), past_day(26)
    expected = events_insert(clickhouse, day=day, count=1000, seed=6)
    label = f"{day:%Y%m%d}"
    # What a worker SIGKILLed between its load and its cleanup leaves: its attempt's staging table,
    # holding rows. Another partition's leftover belongs to that partition's next attempt.
    bigquery_client.create_dataset(f"{bigquery_client.project}.{bigquery_settings}", exists_ok=True)
    for name in (f"_etl_staging_events_{label}_killed", f"_etl_staging_events_{other:%Y%m%d}_killed"):
        leftover = bigquery.Table(
            f"{bigquery_client.project}.{bigquery_settings}.{name}", schema=[bigquery.SchemaField("x", "INT64")]
        )
        bigquery_client.create_table(leftover)

    partition_export(table="events", day=day)

    assert bigquery_per_video(bigquery_client, dataset=bigquery_settings, table="events", day=day) == expected
    assert sorted(t.table_id for t in bigquery_client.list_tables(bigquery_settings)) == [
        f"_etl_staging_events_{other:%Y%m%d}_killed",
        "events",
    ]
