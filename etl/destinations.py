"""Where an exported partition goes: BigQuery, or the local Parquet archive of the embedded default.

Both replace a partition as a whole, so exporting the same partition twice leaves one copy:

* BigQuery, ``decorator`` mode (real BigQuery, days): a load job with ``WRITE_TRUNCATE`` into
  ``table$YYYYMMDD`` replaces exactly that day partition, atomically, at no query cost.
* BigQuery, ``merge`` mode (emulators, and every hourly export): a load job replaces a staging
  table, then one ``MERGE`` deletes the partition's old rows and inserts the new ones. A single DML
  statement is atomic, so readers see the old partition or the new one, never a mix, and a failed
  load leaves the target untouched.
* Local: the file is moved into ``<root>/<table>/dt=YYYY-MM-DD/part-0.parquet`` with ``os.replace``
  (hours: ``.../dt=YYYY-MM-DD/hour=HH/part-0.parquet``), atomic on one filesystem.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol

from django.conf import settings
from google.api_core.exceptions import NotFound
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from etl.schema import Column, bigquery_schema
from etl.tables import ExportTable, Partition

logger = logging.getLogger(__name__)


class Destination(Protocol):
    kind: str

    def describe(self, table: ExportTable, partition: Partition) -> str:
        """Where ``partition`` of ``table`` lands (recorded on the export run)."""
        ...

    def replace(self, *, table: ExportTable, partition: Partition, columns: list[Column], parquet: Path) -> None:
        """Make the partition's content exactly the rows of ``parquet`` (idempotent)."""
        ...


class LocalParquetDestination:
    kind = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _day_dir(self, table: ExportTable, day: dt.date) -> Path:
        return self.root / table.name / f"dt={day.isoformat()}"

    def path(self, table: ExportTable, partition: Partition) -> Path:
        day_dir = self._day_dir(table, partition.day)
        if partition.hour is not None:
            day_dir = day_dir / f"hour={partition.hour:02d}"
        return day_dir / "part-0.parquet"

    def describe(self, table: ExportTable, partition: Partition) -> str:
        return str(self.path(table, partition))

    def replace(self, *, table: ExportTable, partition: Partition, columns: list[Column], parquet: Path) -> None:
        target = self.path(table, partition)
        day_dir = self._day_dir(table, partition.day)
        if partition.hour is not None and (day_dir / "part-0.parquet").exists():
            # The whole closed day is already archived and includes this hour; an hour file next
            # to it would be counted twice by anyone reading the day folder.
            logger.info("etl.local_hour_superseded", extra={"path": str(target)})
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        shutil.copyfile(parquet, staging)
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        if partition.hour is None:
            # The day supersedes its provisional hourly parts. Drop them before the day file
            # appears so a reader never sees both.
            for hour_dir in day_dir.glob("hour=*"):
                shutil.rmtree(hour_dir, ignore_errors=True)
        os.replace(staging, target)


def bigquery_client_get() -> bigquery.Client:
    """A client for ``BIGQUERY_PROJECT``: Application Default Credentials, or an emulator."""
    if settings.BIGQUERY_API_ENDPOINT:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(
            project=settings.BIGQUERY_PROJECT,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=settings.BIGQUERY_API_ENDPOINT),
            location=settings.BIGQUERY_LOCATION,
        )
    # GOOGLE_APPLICATION_CREDENTIALS (a key file) or the workload identity, via google.auth.default.
    return bigquery.Client(project=settings.BIGQUERY_PROJECT, location=settings.BIGQUERY_LOCATION)


def _quote(identifier: str) -> str:
    return "`" + identifier.replace("`", "") + "`"


class BigQueryDestination:
    kind = "bigquery"

    def __init__(
        self,
        *,
        client: bigquery.Client,
        dataset: str,
        replace_mode: str = "decorator",
        job_timeout: float = 3600.0,
        retry_deadline: float = 120.0,
        upload_retries: int = 6,
    ) -> None:
        if replace_mode not in {"decorator", "merge"}:
            raise ValueError(f"replace_mode must be 'decorator' or 'merge', not {replace_mode!r}")
        self.client = client
        self.dataset = dataset
        self.replace_mode = replace_mode
        self.job_timeout = job_timeout
        # The client's default retries API calls for up to 600 s; a shorter deadline hands long
        # outages to the Celery task's backoff, which frees the worker and records the attempt.
        self.retry = DEFAULT_RETRY.with_deadline(retry_deadline)
        self.upload_retries = upload_retries

    def table_id(self, table: ExportTable) -> str:
        return f"{self.client.project}.{self.dataset}.{table.name}"

    def describe(self, table: ExportTable, partition: Partition) -> str:
        return f"bigquery:{self.table_id(table)}"

    def table_ensure(self, table: ExportTable, columns: list[Column]) -> bigquery.Table:
        """Create the dataset and the day-partitioned table if missing; add new columns if any."""
        self.client.create_dataset(
            bigquery.Dataset(f"{self.client.project}.{self.dataset}"), exists_ok=True, retry=self.retry
        )
        schema = bigquery_schema(columns)
        try:
            existing = self.client.get_table(self.table_id(table), retry=self.retry)
        except NotFound:
            new = bigquery.Table(self.table_id(table), schema=schema)
            new.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=table.time_column
            )
            new.description = table.description or None
            return self.client.create_table(new, exists_ok=True, retry=self.retry)
        known = {field.name for field in existing.schema}
        added = [column for column in columns if column.name not in known]
        if added:
            # A ClickHouse migration added columns: widen the table; old partitions read them as
            # NULL (BigQuery only allows NULLABLE/REPEATED additions). DDL rather than a schema
            # patch: both BigQuery and the emulator apply it to the stored table.
            clauses = ", ".join(
                f"ADD COLUMN IF NOT EXISTS {_quote(column.name)} "
                + (f"ARRAY<{column.bigquery_type}>" if column.repeated else column.bigquery_type)
                for column in added
            )
            ddl = f"ALTER TABLE {_quote(self.table_id(table))} {clauses}"
            self.client.query(ddl, retry=self.retry).result(timeout=self.job_timeout, retry=self.retry)
            existing = self.client.get_table(self.table_id(table), retry=self.retry)
        return existing

    def _load(self, parquet: Path, destination: str, *, write_disposition: str, partitioned_on: str | None) -> int:
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition=write_disposition
        )
        if partitioned_on is not None:
            config.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=partitioned_on
            )
        with open(parquet, "rb") as handle:
            # Resumable upload: no size= (which switches to a multipart upload).
            job = self.client.load_table_from_file(
                handle, destination, job_config=config, job_id_prefix="etl_", num_retries=self.upload_retries
            )
        job.result(timeout=self.job_timeout, retry=self.retry)
        return int(job.output_rows or 0)

    def replace(self, *, table: ExportTable, partition: Partition, columns: list[Column], parquet: Path) -> None:
        self.table_ensure(table, columns)
        if self.replace_mode == "decorator" and partition.hour is None:
            decorated = f"{self.table_id(table)}${partition.day:%Y%m%d}"
            self._load(parquet, decorated, write_disposition="WRITE_TRUNCATE", partitioned_on=table.time_column)
            return
        self._replace_by_merge(table=table, partition=partition, columns=columns, parquet=parquet)

    def _staging_leftovers_drop(self, prefix: str) -> None:
        """Drop the staging tables earlier attempts at this partition left behind (killed mid-load).

        Safe because the partition's lease keeps attempts from overlapping; best effort because
        each table also expires by itself within a day.
        """
        try:
            for item in self.client.list_tables(f"{self.client.project}.{self.dataset}", retry=self.retry):
                if item.table_id.startswith(prefix):
                    self.client.delete_table(item.reference, not_found_ok=True, retry=self.retry)
        except NotFound:
            return

    def _replace_by_merge(
        self, *, table: ExportTable, partition: Partition, columns: list[Column], parquet: Path
    ) -> None:
        prefix = f"_etl_staging_{table.name}_{partition.label.replace('-', '')}_"
        self._staging_leftovers_drop(prefix)
        # A staging table of this attempt's own: a killed attempt can leave its table half created
        # (the emulator, SIGKILLed mid-request, kept it in its engine but not in its catalog, and
        # every retry's CREATE of the same name then failed), and a name never reused cannot collide.
        staging_id = f"{self.client.project}.{self.dataset}.{prefix}{uuid.uuid4().hex[:12]}"
        staging = bigquery.Table(staging_id, schema=bigquery_schema(columns))
        # If a worker dies between load and cleanup the staging table removes itself.
        staging.expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        self.client.create_table(staging, retry=self.retry)
        try:
            self._load(parquet, staging_id, write_disposition="WRITE_TRUNCATE", partitioned_on=None)
            names = ", ".join(_quote(column.name) for column in columns)
            time_column = next(column for column in columns if column.name == table.time_column)
            if time_column.is_timestamp:
                condition = f"T.{_quote(table.time_column)} >= @start AND T.{_quote(table.time_column)} < @end"
                parameters = [
                    bigquery.ScalarQueryParameter("start", "TIMESTAMP", partition.start),
                    bigquery.ScalarQueryParameter("end", "TIMESTAMP", partition.end),
                ]
            else:
                if partition.hour is not None:
                    raise ValueError(f"{table.name}.{table.time_column} is a DATE: hourly exports need a time")
                condition = f"T.{_quote(table.time_column)} = @day"
                parameters = [bigquery.ScalarQueryParameter("day", "DATE", partition.day)]
            # Identifiers come from the export registry and ClickHouse's own column names, never
            # from a request; the partition bounds are bound parameters.
            sql = (
                f"MERGE {_quote(self.table_id(table))} T USING {_quote(staging_id)} S ON FALSE "  # noqa: S608
                f"WHEN NOT MATCHED BY SOURCE AND {condition} THEN DELETE "
                f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({names})"
            )
            job = self.client.query(
                sql, job_config=bigquery.QueryJobConfig(query_parameters=parameters), retry=self.retry
            )
            job.result(timeout=self.job_timeout, retry=self.retry)
        finally:
            try:
                self.client.delete_table(staging_id, not_found_ok=True, retry=self.retry)
            except Exception:  # the table expires by itself; keep the real error
                logger.warning("etl.staging_cleanup_failed", extra={"table": staging_id}, exc_info=True)


def destination_get() -> Destination:
    """BigQuery when a project is configured, else the local Parquet archive."""
    if settings.ETL_DESTINATION == "bigquery":
        return BigQueryDestination(
            client=bigquery_client_get(),
            dataset=settings.BIGQUERY_DATASET,
            replace_mode=settings.BIGQUERY_REPLACE_MODE,
            job_timeout=settings.ETL_BIGQUERY_JOB_TIMEOUT,
            retry_deadline=settings.ETL_BIGQUERY_RETRY_DEADLINE,
            upload_retries=settings.ETL_BIGQUERY_UPLOAD_RETRIES,
        )
    return LocalParquetDestination(Path(settings.ETL_LOCAL_DIR))
