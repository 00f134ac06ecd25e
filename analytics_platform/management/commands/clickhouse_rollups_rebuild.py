"""``manage.py clickhouse_rollups_rebuild``: re-derive rollup partitions from ``events`` and
``view_summaries`` (analytics_platform/rollup_rebuild.py; README "Rebuilding rollups").

Resumable: partitions already rebuilt under the current definition are skipped (``--force`` redoes
them), so re-running an interrupted rebuild picks up where it stopped. Progress goes to stderr: a
bar on a terminal, one line per partition otherwise (logs, CI).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from analytics_platform import rollup_rebuild, warehouse


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from exc


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise CommandError(f"not a number: {value!r}") from exc
    if number < 1:
        raise CommandError(f"must be at least 1: {value}")
    return number


def _hours(value: str) -> dt.timedelta:
    try:
        hours = float(value)
    except ValueError as exc:
        raise CommandError(f"not a number of hours: {value!r}") from exc
    if not 0 <= hours <= 24 * 400:
        raise CommandError(f"--settle-hours must lie between 0 and {24 * 400}: {value}")
    return dt.timedelta(hours=hours)


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise CommandError(f"not a number of seconds: {value!r}") from exc
    if not 0 <= seconds <= 3600:
        raise CommandError(f"--quiet-seconds must lie between 0 and 3600: {value}")
    return seconds


class Command(BaseCommand):
    help = "Rebuild ClickHouse rollups from events and view_summaries, one partition at a time (resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--table",
            action="append",
            dest="tables",
            help=f"rollup to rebuild (repeatable; default all): {', '.join(warehouse.rollup_names())}",
        )
        parser.add_argument("--from", dest="first", type=_date, help="first day, YYYY-MM-DD (its partition)")
        parser.add_argument("--to", dest="last", type=_date, help="last day, inclusive (its partition)")
        parser.add_argument(
            "--include-live",
            action="store_true",
            help="also rebuild partitions still receiving rows (see README: live inserts)",
        )
        parser.add_argument(
            "--settle-hours",
            dest="settle",
            type=_hours,
            default=rollup_rebuild.DEFAULT_SETTLE,
            help="a partition is live until this long after its end (default 6)",
        )
        parser.add_argument(
            "--quiet-seconds",
            type=_seconds,
            default=rollup_rebuild.DEFAULT_QUIET_SECONDS,
            help="read a partition once its raw rows went unchanged this long (default 10)",
        )
        parser.add_argument("--force", action="store_true", help="rebuild partitions already rebuilt")
        parser.add_argument("--max-partitions", type=_positive, help="stop after this many partitions")
        parser.add_argument("--dry-run", action="store_true", help="print the statements, change nothing")
        parser.add_argument("--no-progress", action="store_true", help="no progress output")

    def handle(self, *args: Any, **options: Any) -> None:
        dry_run: bool = options["dry_run"]
        quiet: bool = options["no_progress"]
        bar: tqdm[Any] | None = None
        interactive = sys.stderr.isatty()

        def on_plan(report: rollup_rebuild.RebuildReport, count: int) -> None:
            nonlocal bar
            self.stdout.write(
                f"{count} partition(s) to {'print' if dry_run else 'rebuild'}"
                f" ({len(report.planned) - count} more after --max-partitions);"
                f" skipped: {report.skipped_done} done before, {report.skipped_live} live,"
                f" {report.skipped_retention} older than the raw tables' retention"
            )
            if not quiet and interactive and not dry_run:
                bar = tqdm(total=count, unit="partition", file=sys.stderr)

        def on_partition(result: rollup_rebuild.PartitionResult) -> None:
            label = f"{result.plan.table} {result.plan.partition}"
            if dry_run:
                self.stdout.write(f"-- {label}")
                for statement in result.statements:
                    self.stdout.write(statement + ";")
            elif bar is not None:
                bar.set_description(label)
                bar.update(1)
            elif not quiet:
                rate = result.rows / result.seconds if result.seconds else 0.0
                self.stderr.write(
                    f"{label}: {result.rows} rows in {result.seconds:.2f}s ({rate:.0f} rows/s),"
                    f" attempts {result.attempts}"
                )

        try:
            report = rollup_rebuild.rollups_rebuild(
                tables=options["tables"],
                first=options["first"],
                last=options["last"],
                include_live=options["include_live"],
                settle=options["settle"],
                force=options["force"],
                dry_run=dry_run,
                max_partitions=options["max_partitions"],
                quiet_seconds=options["quiet_seconds"],
                on_plan=on_plan,
                on_partition=on_partition,
            )
        except rollup_rebuild.RebuildError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar is not None:
                bar.close()
        if not dry_run:
            seconds = sum(result.seconds for result in report.done)
            self.stdout.write(
                self.style.SUCCESS(
                    f"{len(report.done)} partition(s) rebuilt, {report.rows} rollup rows in {seconds:.1f}s"
                )
            )
        left = len(report.planned) - len(report.done)
        if left and not dry_run:
            self.stdout.write(f"{left} partition(s) left: run the same command again to continue")
