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
