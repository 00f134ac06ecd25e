"""Exporting one partition of one table: ClickHouse -> Parquet (streamed) -> destination.

Memory stays bounded by one ClickHouse block: rows arrive through ``execute_iter`` in blocks of
``max_block_size``, each block becomes one Arrow ``RecordBatch`` and one Parquet row group on a
temporary file, and only the finished file is handed to the destination. Every attempt is
recorded as an ``ExportRun``; the partition's lease keeps two attempts from overlapping.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from clickhouse_driver import Client
from django.conf import settings
from django.utils import timezone

from analytics_platform.clickhouse import client_get
from etl.destinations import Destination, destination_get
from etl.locks import partition_lease
from etl.models import ExportRun
from etl.schema import Column, arrow_schema, column_from_clickhouse
from etl.tables import EXPORT_TABLES, ExportTable, Partition, days_between, export_table_get, previous_closed_day

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], None]


class PartitionNotClosed(ValueError):
    """Exporting a day or hour that is still receiving events would archive a partial partition."""


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("\\", "\\\\").replace("`", "\\`") + "`"


def clickhouse_columns_get(*, client: Client, table: ExportTable) -> list[Column]:
    """The table's stored columns, in order, from ClickHouse itself (ALIAS/EPHEMERAL excluded)."""
    rows = client.execute(f"DESCRIBE TABLE {_quote(table.clickhouse_table)}")
    return [column_from_clickhouse(row[0], row[1]) for row in rows if row[2] not in {"ALIAS", "EPHEMERAL"}]


def _where(table: ExportTable, columns: list[Column], partition: Partition) -> tuple[str, dict[str, Any]]:
    time_column = next((column for column in columns if column.name == table.time_column), None)
    if time_column is None:
        raise ValueError(f"{table.clickhouse_table} has no column {table.time_column}")
    if time_column.is_timestamp:
        # Epoch seconds: unambiguous whatever the server's or the column's timezone.
        bounds = {"start": int(partition.start.timestamp()), "end": int(partition.end.timestamp())}
        name = _quote(table.time_column)
        return f"{name} >= toDateTime(%(start)s, 'UTC') AND {name} < toDateTime(%(end)s, 'UTC')", bounds
    if partition.hour is not None:
        raise ValueError(f"{table.name}.{table.time_column} is a Date: hourly exports need a time")
    return f"{_quote(table.time_column)} = %(day)s", {"day": partition.day}


def _converter(column: Column) -> Callable[[tuple[Any, ...]], list[Any] | tuple[Any, ...]] | None:
    """Python-side conversions clickhouse-driver's values need before Arrow takes them."""
    base = column.clickhouse_type
    if any(kind in base for kind in ("UUID", "IPv4", "IPv6")):

        def to_str(values: tuple[Any, ...]) -> list[Any]:
            return [None if v is None else str(v) for v in values]

        return to_str
    if "FixedString" in base:

        def decode(values: tuple[Any, ...]) -> list[Any]:
            return [v.rstrip(b"\0").decode() if isinstance(v, bytes) else v for v in values]

        return decode
    return None


def partition_batches(
    *,
    client: Client,
    table: ExportTable,
    columns: list[Column],
    partition: Partition,
    block_size: int,
) -> Iterator[pa.RecordBatch]:
    """Stream the partition's rows as Arrow batches of at most ``block_size`` rows."""
    where, params = _where(table, columns, partition)
    select = ", ".join(column.select_expression for column in columns)
    # Identifiers come from the export registry and DESCRIBE; values are bound parameters.
    final = " FINAL" if table.final else ""
    sql = f"SELECT {select} FROM {_quote(table.clickhouse_table)}{final} WHERE {where}"  # noqa: S608
    schema = arrow_schema(columns)
    converters = [_converter(column) for column in columns]
    chunks = client.execute_iter(sql, params, settings={"max_block_size": block_size}, chunk_size=block_size)
    for chunk in chunks:
        if not chunk:
            continue
        arrays = []
        for index, values in enumerate(zip(*chunk, strict=True)):
            convert = converters[index]
            arrays.append(pa.array(convert(values) if convert else values, type=schema.field(index).type))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def partition_row_count(*, client: Client, table: ExportTable, columns: list[Column], partition: Partition) -> int:
    where, params = _where(table, columns, partition)
    final = " FINAL" if table.final else ""
    rows = client.execute(f"SELECT count() FROM {_quote(table.clickhouse_table)}{final} WHERE {where}", params)  # noqa: S608
    return int(rows[0][0])


@dataclass(frozen=True)
class ParquetFile:
    path: Path
    rows: int
    bytes: int


def parquet_write(
    *, batches: Iterator[pa.RecordBatch], schema: pa.Schema, path: Path, on_rows: ProgressCallback | None = None
) -> ParquetFile:
    """Write batches as row groups; an empty partition still gets a file (it replaces a day with nothing)."""
    rows = 0
    with pq.ParquetWriter(path, schema, compression="snappy") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
            if on_rows is not None:
                on_rows(batch.num_rows)
    return ParquetFile(path=path, rows=rows, bytes=path.stat().st_size)


def _finish(run: ExportRun, status: str, started: float, **fields: Any) -> ExportRun:
    run.status = status
    run.duration_seconds = time.monotonic() - started
    run.finished_at = timezone.now()
    for name, value in fields.items():
        setattr(run, name, value)
    run.save()
    return run


def partition_export(
    *,
    table: str,
    day: dt.date,
    hour: int | None = None,
    destination: Destination | None = None,
    dry_run: bool = False,
    attempt: int = 1,
    task_id: str = "",
    on_rows: ProgressCallback | None = None,
    now: dt.datetime | None = None,
) -> ExportRun:
    """Export one closed partition, replacing whatever the destination held for it.

    Returns the finished ``ExportRun``: ``succeeded``, ``skipped`` (another export holds the
    partition's lease) or ``dry_run`` (rows counted, nothing written). A failure is recorded as
    ``failed`` and re-raised so the caller (a Celery task) can retry it.
    """
    spec = export_table_get(table)
    partition = Partition(day=day, hour=hour)
    if not partition.is_closed(now or timezone.now()):
        raise PartitionNotClosed(f"{spec.name} {partition.label} is not closed yet")
    destination = destination or destination_get()
    started = time.monotonic()
    run = ExportRun.objects.create(
        table=spec.name,
        day=day,
        hour=hour,
        destination=destination.describe(spec, partition),
        status=ExportRun.Status.DRY_RUN if dry_run else ExportRun.Status.RUNNING,
        attempt=attempt,
        task_id=task_id,
    )
    client = client_get()
    try:
        columns = clickhouse_columns_get(client=client, table=spec)
        if dry_run:
            rows = partition_row_count(client=client, table=spec, columns=columns, partition=partition)
            return _finish(run, ExportRun.Status.DRY_RUN, started, rows=rows)
        with partition_lease(partition.lease_key(spec.name), ttl_seconds=settings.ETL_LOCK_TTL_SECONDS) as lease:
            if not lease.acquired:
                return _finish(run, ExportRun.Status.SKIPPED, started, error="another export holds this partition")
            with tempfile.TemporaryDirectory(prefix="etl-") as tmp:
                path = Path(tmp) / f"{spec.name}-{partition.label}-{uuid.uuid4().hex}.parquet"
                batches = partition_batches(
                    client=client,
                    table=spec,
                    columns=columns,
                    partition=partition,
                    block_size=settings.ETL_MAX_BLOCK_SIZE,
                )
                written = parquet_write(batches=batches, schema=arrow_schema(columns), path=path, on_rows=on_rows)
                run.rows, run.bytes = written.rows, written.bytes
                run.save(update_fields=["rows", "bytes"])
                lease.ensure_held()
                destination.replace(table=spec, partition=partition, columns=columns, parquet=path)
        logger.info(
            "etl.partition_exported",
            extra={"table": spec.name, "partition": partition.label, "rows": run.rows, "bytes": run.bytes},
        )
        return _finish(run, ExportRun.Status.SUCCEEDED, started)
    except Exception as exc:
        _finish(run, ExportRun.Status.FAILED, started, error=f"{type(exc).__name__}: {exc}"[:10000])
        raise
    finally:
        client.disconnect()


def partitions_pending(
    *, table: str, first: dt.date, last: dt.date, hourly: bool = False, force: bool = False
) -> list[Partition]:
    """The partitions of ``[first, last]`` still to export: all with ``force``, else those without
    a final successful run (an export that failed after an earlier success left the earlier data
    intact, because every destination replaces a partition atomically).

    A success is final only if it started ``ETL_SETTLE_SECONDS`` after the partition ended: a view
    that starts before midnight and closes hours later, or an event retried late, lands in
    ClickHouse after the first (00:15) export. The nightly catch-up therefore exports a day once
    provisionally and once more, replacing it, the next night.
    """
    spec = export_table_get(table)
    hours: list[int | None] = list(range(24)) if hourly else [None]
    wanted = [Partition(day=day, hour=hour) for day in days_between(first, last) for hour in hours]
    if force:
        return wanted
    settle = dt.timedelta(seconds=settings.ETL_SETTLE_SECONDS)
    final: set[tuple[dt.date, int | None]] = set()
    for day, hour, started_at in ExportRun.objects.filter(
        table=spec.name, day__gte=first, day__lte=last, status=ExportRun.Status.SUCCEEDED
    ).values_list("day", "hour", "started_at"):
        if started_at >= Partition(day=day, hour=hour).end + settle:
            final.add((day, hour))
    return [partition for partition in wanted if (partition.day, partition.hour) not in final]


def closed_days_pending(*, now: dt.datetime, lookback_days: int) -> list[tuple[str, Partition]]:
    """(table, day) of every table for the closed days of the last ``lookback_days`` without a success."""
    last = previous_closed_day(now)
    first = last - dt.timedelta(days=max(lookback_days, 1) - 1)
    return [
        (table, partition)
        for table in sorted(EXPORT_TABLES)
        for partition in partitions_pending(table=table, first=first, last=last)
    ]
