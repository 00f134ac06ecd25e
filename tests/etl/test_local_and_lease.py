"""The embedded default's local Parquet archive, and the per-partition lease."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from django.db import connections
from django.utils import timezone

from etl.locks import partition_lease
from etl.models import ExportRun, PartitionLease
from etl.services import partition_export

from .conftest import past_day
from .data import clickhouse_per_video, events_insert, views_insert

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]


def _per_video(table) -> dict[str, tuple[int, int]]:
    grouped = table.group_by("video_id").aggregate([("video_id", "count"), ("position_ms", "sum")])
    return {row["video_id"]: (row["video_id_count"], row["position_ms_sum"]) for row in grouped.to_pylist()}


def test_local_archive_has_the_bigquery_partition_layout(clickhouse, local_archive):
    day = past_day(50)
    events_insert(clickhouse, day=day, count=3000, seed=50)
    views_insert(clickhouse, day=day, count=200, seed=51)

    run = partition_export(table="events", day=day)
    partition_export(table="view_summaries", day=day)

    path = local_archive / "events" / f"dt={day.isoformat()}" / "part-0.parquet"
    assert run.destination == str(path)
    assert run.bytes == path.stat().st_size
    table = pq.read_table(path)
    assert table.num_rows == run.rows == 3000
    assert _per_video(table) == clickhouse_per_video(clickhouse, table="events", day=day)
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert pc.min(table["ts"]).as_py() == dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    assert (local_archive / "view_summaries" / f"dt={day.isoformat()}" / "part-0.parquet").exists()
    # Hive-style folders: the archive reads back as one dataset partitioned by day.
    dataset = ds.dataset(local_archive / "events", format="parquet", partitioning="hive")
    assert dataset.count_rows() == 3000


def test_local_rerun_replaces_the_file_and_the_day_supersedes_its_hours(clickhouse, local_archive):
    day = past_day(52)
    events_insert(clickhouse, day=day, count=1000, seed=52)
    partition_export(table="events", day=day, hour=3)
    hour_file = local_archive / "events" / f"dt={day.isoformat()}" / "hour=03" / "part-0.parquet"
    assert hour_file.exists()
    partition_export(table="events", day=day)
    events_insert(clickhouse, day=day, count=400, seed=53)
    partition_export(table="events", day=day)

    day_dir = local_archive / "events" / f"dt={day.isoformat()}"
    assert sorted(os.listdir(day_dir)) == ["part-0.parquet"]  # no hour parts, no temp files
    assert pq.read_table(day_dir / "part-0.parquet").num_rows == 1400


def test_an_export_skips_a_partition_whose_lease_is_held(clickhouse, local_archive):
    day = past_day(54)
    events_insert(clickhouse, day=day, count=100, seed=54)
    key = f"events/{day.isoformat()}"
    with partition_lease(key, ttl_seconds=60) as held:
        assert held.acquired
        with partition_lease(key, ttl_seconds=60) as second:
            assert not second.acquired
        run = partition_export(table="events", day=day)
    assert run.status == ExportRun.Status.SKIPPED
    assert not (local_archive / "events" / f"dt={day.isoformat()}").exists()
    # Released: the next export runs.
    assert partition_export(table="events", day=day).status == ExportRun.Status.SUCCEEDED


def test_an_expired_lease_of_a_dead_worker_is_taken_over(clickhouse, local_archive):
    day = past_day(56)
    events_insert(clickhouse, day=day, count=100, seed=56)
    PartitionLease.objects.create(
        key=f"events/{day.isoformat()}", owner="dead-worker", expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    assert partition_export(table="events", day=day).status == ExportRun.Status.SUCCEEDED


def _try_lease(key: str, barrier, results) -> None:
    # A separate process with its own database connection, like a second Celery worker.
    import django

    django.setup()
    connections.close_all()
    barrier.wait()
    with partition_lease(key, ttl_seconds=30) as lease:
        results.put(lease.acquired)
        barrier.wait()  # hold it until every process has tried


@pytest.mark.postgres
@pytest.mark.django_db(databases=["default", "clickhouse"], transaction=True)
def test_only_one_process_gets_the_lease():
    key = "events/2020-01-01"
    PartitionLease.objects.create(key=key)  # committed: visible to the other processes
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    connections.close_all()
    processes = [context.Process(target=_try_lease, args=(key, barrier, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    outcomes = [results.get(timeout=5) for _ in processes]
    assert sorted(outcomes) == [False, False, False, True]


def test_the_task_comes_back_later_when_the_partition_is_busy(clickhouse, local_archive, settings):
    from celery.exceptions import MaxRetriesExceededError

    from etl.tasks import export_partition

    settings.ETL_TASK_MAX_RETRIES = 2
    day = past_day(58)
    events_insert(clickhouse, day=day, count=10, seed=58)
    with partition_lease(f"events/{day.isoformat()}", ttl_seconds=60) as held:
        assert held.acquired
        # Eager: Celery runs the retries inline (no countdown); each one finds the lease still held.
        result = export_partition.apply(args=("events", day.isoformat()))
    assert isinstance(result.result, MaxRetriesExceededError)
    assert ExportRun.objects.filter(day=day, status=ExportRun.Status.SKIPPED).count() == 3
    assert not ExportRun.objects.filter(day=day, status=ExportRun.Status.SUCCEEDED).exists()
