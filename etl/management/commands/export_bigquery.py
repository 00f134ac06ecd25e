"""``manage.py export_bigquery --from DATE --to DATE``: backfill closed days (or hours).

Runs in the calling process, one partition after another, through the same service the Celery
tasks use (so the same lease and the same idempotent replace). Resumable: partitions with a
successful run are skipped unless ``--force``, so re-running an interrupted backfill picks up
where it stopped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from tqdm import tqdm

from etl.destinations import destination_get
from etl.models import ExportRun
from etl.services import partition_export, partitions_pending
from etl.tables import EXPORT_TABLES, UnknownTable, export_table_get


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from exc


class Command(BaseCommand):
    help = "Export closed days (or hours) of ClickHouse tables to BigQuery or the local Parquet archive."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="first", type=_date, required=True, help="first day, YYYY-MM-DD")
        parser.add_argument("--to", dest="last", type=_date, required=True, help="last day (inclusive)")
        parser.add_argument("--table", action="append", dest="tables", help="table to export (repeatable); default all")
        parser.add_argument("--hour", action="store_true", help="export each hour separately instead of whole days")
        parser.add_argument("--dry-run", action="store_true", help="count rows per partition, write nothing")
        parser.add_argument("--force", action="store_true", help="re-export partitions that already succeeded")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")

    def handle(self, *args: Any, **options: Any) -> None:
        first: dt.date = options["first"]
        last: dt.date = options["last"]
        if last < first:
            raise CommandError("--to is before --from")
        names = options["tables"] or sorted(EXPORT_TABLES)
        if not names:
            raise CommandError("no export tables are registered")
        try:
            for name in names:
                export_table_get(name)
        except UnknownTable as exc:
            raise CommandError(str(exc.args[0])) from exc
        dry_run: bool = options["dry_run"]
        plan = [
            (name, partition)
            for name in names
            for partition in partitions_pending(
                table=name, first=first, last=last, hourly=options["hour"], force=options["force"] or dry_run
            )
        ]
        now = timezone.now()
        still_open = [(name, partition) for name, partition in plan if not partition.is_closed(now)]
        if still_open:
            # Today (or the current hour) is still receiving events: beat exports it once closed.
            self.stdout.write(f"{len(still_open)} partition(s) not closed yet, left out")
            plan = [(name, partition) for name, partition in plan if partition.is_closed(now)]
        self.stdout.write(f"{len(plan)} partition(s) to {'count' if dry_run else 'export'}")
        destination = destination_get()
        totals: dict[str, int] = {}
        rows = 0
        with tqdm(total=len(plan), unit="partition", disable=options["no_progress"]) as bar:
            for name, partition in plan:
                bar.set_description(f"{name} {partition.label}")
                try:
                    run = partition_export(
                        table=name, day=partition.day, hour=partition.hour, destination=destination, dry_run=dry_run
                    )
                except Exception as exc:
                    bar.close()
                    raise CommandError(
                        f"{name} {partition.label} failed: {exc}. Fix the cause and run the same command again: "
                        "finished partitions are skipped."
                    ) from exc
                totals[run.status] = totals.get(run.status, 0) + 1
                rows += run.rows
                bar.set_postfix(rows=rows)
                bar.update(1)
                if dry_run:
                    tqdm.write(
                        f"{name} {partition.label}: {run.rows} rows -> {run.destination}", file=self.stdout, end=""
                    )
        summary = ", ".join(f"{count} {status}" for status, count in sorted(totals.items())) or "nothing to do"
        self.stdout.write(self.style.SUCCESS(f"{summary}; {rows} rows"))
        if totals.get(ExportRun.Status.SKIPPED):
            self.stdout.write("skipped partitions were being exported by another process; run again later")
