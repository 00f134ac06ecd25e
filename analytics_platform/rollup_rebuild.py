"""Re-derive rollup partitions from the raw tables: ``manage.py clickhouse_rollups_rebuild``.

For an existing single-node database whose rollups are missing, damaged, or new (a schema change
added a rollup that has no history yet). Each rollup partition is rebuilt from ``events`` /
``view_summaries`` with the views' own SELECTs (``warehouse.rollup_selects``) into a staging
copy of the rollup, then swapped in with ``ALTER TABLE ... REPLACE PARTITION`` (``DROP
PARTITION`` when the sources have no rows for it): readers see the old partition or the new one,
never half of one, and a rerun replaces rather than adds, so nothing is ever counted twice.

Progress: every finished partition is a ``RollupPartitionRebuild`` row; a rerun skips partitions
rebuilt under the current definition (``--force`` redoes them), so a killed run resumes.

Live inserts (the sink keeps writing while this runs). A partition's rows are read at one moment
and the swap happens a moment later; a raw row inserted in between would reach the rollup through
its view and then be wiped by the swap. So:

* by default only partitions whose time span ended more than ``settle`` ago are rebuilt (almost
  all rows of a time range arrive while it is current; a view's summary when the view closes);
* late rows still arrive for older partitions (ingest accepts event times back to the raw
  retention). A partition is read only once its raw partitions went unwritten for
  ``quiet_seconds`` (``_Quiet``: a view's output lands a moment after its INSERT's raw part, and
  a row read but whose rollup rows land after the swap would count twice); each attempt notes
  the highest block number of the raw partitions and of the rollup partition before reading,
  refuses to swap if a view wrote the rollup partition during the read, and after the swap
  re-reads the raw block numbers: if rows arrived, the partition is rebuilt again (up to
  ``ATTEMPTS`` times, then the run stops with an error and the partition is left unrecorded, so
  the next run redoes it).

Left open: a view lagging its INSERT's raw part by more than the quiet period.

Cluster mode is refused: the rollups there are per-shard ``*_local`` tables fed from each shard's
own raw rows, and a rebuild would have to run on every shard against its local tables (README).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from analytics_platform import warehouse
from analytics_platform.clickhouse import client_get
from analytics_platform.models import RollupPartitionRebuild

ATTEMPTS = 5  # reads of one partition before giving up while rows keep arriving
DEFAULT_SETTLE = dt.timedelta(hours=6)  # like ETL_SETTLE_SECONDS: views closing late, retries
# How long the raw partitions of a rollup partition must go unwritten before it is read (_Quiet):
# far above the time the views take to follow an INSERT (a sink INSERT with all its views costs the
# embedded server 50-80 ms, settings STREAMS_SINK_CHUNK_ROWS).
DEFAULT_QUIET_SECONDS = 10.0
STAGING_SUFFIX = "__rebuild"


class RebuildError(RuntimeError):
    """The rebuild cannot run or could not finish a partition (the message says what to do)."""


@dataclass(frozen=True)
class PartitionPlan:
    table: str
    partition: str
    start: dt.datetime
    end: dt.datetime
    source_partitions: dict[str, tuple[str, ...]]  # raw table -> its partition ids covering the span


@dataclass(frozen=True)
class PartitionResult:
    plan: PartitionPlan
    rows: int
    attempts: int
    seconds: float
    statements: tuple[str, ...] = ()  # dry run: what would run


@dataclass
class RebuildReport:
    planned: list[PartitionPlan] = field(default_factory=list)
    done: list[PartitionResult] = field(default_factory=list)
    skipped_done: int = 0  # rebuilt earlier under the same definition
    skipped_live: int = 0  # span not settled yet (``include_live`` includes them)
    skipped_retention: int = 0  # the raw tables may no longer hold all of the span's rows

    @property
    def rows(self) -> int:
        return sum(result.rows for result in self.done)


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _days(start: dt.datetime, end: dt.datetime) -> Iterable[dt.date]:
    day = start.date()
    while dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) < end:
        yield day
        day += dt.timedelta(days=1)


def _existing_partitions(client: Any, database: str, names: Iterable[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {name: set() for name in names}
    for table, partition_id in client.execute(
        "SELECT DISTINCT table, partition_id FROM system.parts WHERE database = %(db)s AND active AND table IN %(t)s",
        {"db": database, "t": tuple(out)},
    ):
        out[table].add(partition_id)
    return out


def _days_with_rows(client: Any, database: str, source: str, partition_ids: set[str]) -> set[dt.date]:
    """The UTC days a raw table holds rows for: its partition ids when it is partitioned by day,
    else one read of its time column (``view_summaries`` is partitioned by month but feeds daily
    rollup partitions; it has one row per view, far fewer than ``events``)."""
    grain = warehouse.partitioning(warehouse.table_named(source))
    if grain.daily:
        return {dt.datetime.strptime(pid, "%Y%m%d").replace(tzinfo=dt.UTC).date() for pid in partition_ids}
    column = _ident(grain.column)
    rows = client.execute(f"SELECT DISTINCT toDate({column}, 'UTC') FROM {_qualified(database, source)}")  # noqa: S608
    return {row[0] for row in rows}


def _marks(client: Any, database: str, tables: Iterable[str]) -> dict[tuple[str, str], int]:
    """Highest block number per (table, partition): any INSERT into a partition raises it (block
    numbers only grow; merges keep the highest), so an unchanged mark means nothing was written."""
    rows = client.execute(
        "SELECT table, partition_id, max(max_block_number) FROM system.parts"
        " WHERE database = %(db)s AND active AND table IN %(t)s GROUP BY table, partition_id",
        {"db": database, "t": tuple(tables)},
    )
    return {(table, partition): int(mark) for table, partition, mark in rows}


class _Quiet:
    """When each raw partition last changed, as far as this run has seen.

    A raw INSERT commits its part and then the views write the rollups: the rollup rows of a raw
    row already read may land a moment later, after the swap, and count twice. A partition is
    therefore read only once its raw partitions have not changed for ``wait`` seconds (longer
    than a view takes to follow its INSERT); the first wait starts when the run is planned, so a
    run over quiet history waits once, not once per partition.
    """

    def __init__(self, client: Any, database: str, sources: Iterable[str], wait: float) -> None:
        self.client, self.database, self.sources, self.wait = client, database, tuple(sources), wait
        self.started = time.monotonic()
        self.seen = {key: (mark, self.started) for key, mark in _marks(client, database, self.sources).items()}

    def marks(self, keys: Sequence[tuple[str, str]]) -> tuple[dict[tuple[str, str], int], float]:
        """Current marks of ``keys`` and the seconds since the latest of them changed."""
        current = _marks(self.client, self.database, self.sources)
        now = time.monotonic()
        out = {}
        for key in keys:
            mark = current.get(key, 0)
            # A partition without parts at the start (mark 0) has been empty since then.
            if self.seen.get(key, (0, self.started))[0] != mark:
                self.seen[key] = (mark, now)
            self.seen.setdefault(key, (mark, self.started))
            out[key] = mark
        since = min((now - self.seen[key][1] for key in keys), default=float("inf"))
        return out, since


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def rollups_plan(
    *,
    client: Any,
    database: str,
    tables: Sequence[str],
    first: dt.date | None,
    last: dt.date | None,
    include_live: bool,
    settle: dt.timedelta,
    force: bool,
    now: dt.datetime,
) -> RebuildReport:
    """The partitions to rebuild, in dependency order, and why the others are left alone.

    ``first`` / ``last`` (days, inclusive) select the partitions holding those days; a partition
    is always rebuilt whole. Only partitions that hold rows, or whose sources do, are listed.
    """
    report = RebuildReport()
    sources = {name: warehouse.raw_sources(name) for name in tables}
    source_names = {source for names in sources.values() for source in names}
    existing = _existing_partitions(client, database, {*tables, *source_names})
    days = {source: _days_with_rows(client, database, source, existing[source]) for source in source_names}
    done = {
        (row.table, row.partition): row.definition
        for row in RollupPartitionRebuild.objects.filter(database=database, table__in=tables)
    }
    for name in tables:
        table = warehouse.table_named(name)
        grain = warehouse.partitioning(table)
        definition = warehouse.rollup_definition(name)
        # All raw rows of a span are there only if it starts within every source's TTL (a span
        # that starts earlier would be rebuilt from what is left: data lost, so it is skipped);
        # a rollup partition wholly past the rollup's own TTL is being dropped anyway.
        covered_from = now - dt.timedelta(
            days=min(warehouse.retention_days(warehouse.table_named(source)) for source in sources[name])
        )
        kept_from = now - dt.timedelta(days=warehouse.retention_days(table))
        # Clamped: nothing older is kept, and nothing later than a month ahead is accepted (ingest
        # refuses event times more than INGEST_EVENT_MAX_FUTURE_SECONDS ahead), so a wild --from or
        # --to cannot make this loop over millennia.
        low = max(_day_start(first), kept_from) if first else kept_from
        horizon = now + dt.timedelta(days=32)
        high = min(_day_start(last), horizon) + dt.timedelta(days=1) if last else horizon
        seen: set[str] = set()
        for day in _days(low, high):
            partition = grain.partition_id(day)
            if partition in seen:
                continue
            seen.add(partition)
            start, end = grain.span(day)
            source_partitions = {
                source: tuple(
                    sorted(
                        {
                            warehouse.partitioning(warehouse.table_named(source)).partition_id(d)
                            for d in _days(start, end)
                        }
                    )
                )
                for source in sources[name]
            }
            holds_rows = partition in existing[name] or any(
                d in days[source] for source in sources[name] for d in _days(start, end)
            )
            if not holds_rows or end <= kept_from:
                continue
            if start < covered_from:
                report.skipped_retention += 1
            elif not include_live and end > now - settle:
                report.skipped_live += 1
            elif not force and done.get((name, partition)) == definition:
                report.skipped_done += 1
            else:
                report.planned.append(PartitionPlan(name, partition, start, end, source_partitions))
    return report


def _qualified(database: str, name: str) -> str:
    return f"{_ident(database)}.{_ident(name)}"


def staging_statements(database: str, table: str) -> list[str]:
    """A fresh, empty copy of the rollup (same engine, keys, partitioning: REPLACE PARTITION needs
    that) with no views on it, so rows staged there reach nothing else."""
    staging = _qualified(database, table + STAGING_SUFFIX)
    return [f"DROP TABLE IF EXISTS {staging}", f"CREATE TABLE {staging} AS {_qualified(database, table)}"]


def _partition_literal(plan: PartitionPlan) -> str:
    if not plan.partition.isdigit():  # made by Partitioning.partition_id; checked all the same
        raise ValueError(plan.partition)
    return plan.partition


def insert_statements(database: str, plan: PartitionPlan, columns: Sequence[str]) -> list[str]:
    """The INSERTs that stage one partition: the views' SELECTs over the span's raw rows, limited
    to the partition (a bucket never leaves its partition today; the filter keeps that true)."""
    table = warehouse.table_named(plan.table)
    names = ", ".join(_ident(column) for column in columns)
    staging = _qualified(database, plan.table + STAGING_SUFFIX)
    return [
        f"INSERT INTO {staging} ({names}) SELECT {names} FROM ({select})"  # noqa: S608 - code constants
        f" WHERE {table.partition_by} = {_partition_literal(plan)}"
        for select in warehouse.rollup_selects(plan.table, start=plan.start, end=plan.end, database=database)
    ]


def swap_statement(database: str, plan: PartitionPlan, *, staged_rows: int) -> str:
    target = _qualified(database, plan.table)
    partition = _partition_literal(plan)
    if staged_rows:
        staging = _qualified(database, plan.table + STAGING_SUFFIX)
        return f"ALTER TABLE {target} REPLACE PARTITION ID '{partition}' FROM {staging}"
    # ClickHouse refuses REPLACE from an empty partition; no raw rows means an empty partition.
    return f"ALTER TABLE {target} DROP PARTITION ID '{partition}'"


def _staging_clear(database: str, plan: PartitionPlan) -> str:
    staging = _qualified(database, plan.table + STAGING_SUFFIX)
    return f"ALTER TABLE {staging} DROP PARTITION ID '{_partition_literal(plan)}'"


def _staged_rows(client: Any, database: str, plan: PartitionPlan) -> int:
    rows = client.execute(
        "SELECT sum(rows) FROM system.parts"
        " WHERE database = %(db)s AND table = %(t)s AND active AND partition_id = %(p)s",
        {"db": database, "t": plan.table + STAGING_SUFFIX, "p": plan.partition},
    )
    return int(rows[0][0] or 0) if rows else 0


def _output_columns(client: Any, database: str, table: str) -> list[str]:
    """The rollup's columns that its views write (a view names its columns; the others default),
    as ClickHouse types the SELECT."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    written: set[str] = set()
    for select in warehouse.rollup_selects(table, start=epoch, end=epoch, database=database):
        written |= {row[0] for row in client.execute(f"DESCRIBE TABLE ({select})")}
    return [column for column in warehouse.table_named(table).column_names if column in written]


def _partition_rebuild(
    client: Any, database: str, plan: PartitionPlan, *, columns: Sequence[str], lease: Any, quiet: _Quiet
) -> PartitionResult:
    began = time.monotonic()
    raw_keys = [(source, pid) for source, ids in plan.source_partitions.items() for pid in ids]
    rollup_key = [(plan.table, plan.partition)]
    swapped = False
    for attempt in range(1, ATTEMPTS + 1):
        raw_before, since = quiet.marks(raw_keys)
        if since < quiet.wait:
            time.sleep(quiet.wait - since)
            raw_now, _ = quiet.marks(raw_keys)
            if raw_now != raw_before:
                continue  # rows are arriving: wait for a quiet moment again
        rollup_before = _marks(client, database, [plan.table]).get(rollup_key[0], 0)
        client.execute(_staging_clear(database, plan))
        for statement in insert_statements(database, plan, columns):
            client.execute(statement)
        staged = _staged_rows(client, database, plan)
        if _marks(client, database, [plan.table]).get(rollup_key[0], 0) != rollup_before:
            continue  # a view wrote the partition during the read: its rows may or may not be staged
        lease.ensure_held()
        client.execute(swap_statement(database, plan, staged_rows=staged))
        swapped = True
        if quiet.marks(raw_keys)[0] != raw_before:
            continue  # raw rows arrived between the read and the swap; their view output was replaced
        client.execute(_staging_clear(database, plan))
        return PartitionResult(plan, staged, attempt, time.monotonic() - began)
    state = "it may be incomplete now" if swapped else "it was left as it was"
    raise RebuildError(
        f"{plan.table} partition {plan.partition}: rows kept arriving during {ATTEMPTS} attempts; {state}."
        " Run the command again later (the partition is not recorded as done)"
    )


def rollups_rebuild(
    *,
    tables: Sequence[str] | None = None,
    first: dt.date | None = None,
    last: dt.date | None = None,
    include_live: bool = False,
    settle: dt.timedelta = DEFAULT_SETTLE,
    force: bool = False,
    dry_run: bool = False,
    max_partitions: int | None = None,
    quiet_seconds: float = DEFAULT_QUIET_SECONDS,
    on_plan: Callable[[RebuildReport, int], None] | None = None,
    on_partition: Callable[[PartitionResult], None] | None = None,
) -> RebuildReport:
    """Rebuild rollup partitions from the raw tables (module docstring); ``tables``: rollup names
    (default: every rollup). ``on_plan(report, n)`` is called once with the number of partitions
    this run will do, ``on_partition`` after each (progress)."""
    # Imported here: the lease lives with the export that introduced it (etl/locks.py).
    from etl.locks import partition_lease

    if warehouse.cluster_name():
        raise RebuildError(
            "CLICKHOUSE_CLUSTER is set: in cluster mode the rollups are per-shard *_local tables fed by each"
            " shard's own rows; rebuilding them is not supported by this command (README, ClickHouse schema)"
        )
    names = list(tables) if tables else list(warehouse.rollup_names())
    unknown = [name for name in names if name not in warehouse.rollup_names()]
    if unknown:
        raise RebuildError(f"not a rollup: {', '.join(unknown)} (rollups: {', '.join(warehouse.rollup_names())})")
    names = [name for name in warehouse.rollup_names() if name in names]  # dependency order, no repeats
    if first and last and last < first:
        raise RebuildError("--to is before --from")
    client = client_get()
    try:
        database = str(client.execute("SELECT currentDatabase()")[0][0])
        quiet = _Quiet(client, database, {s for name in names for s in warehouse.raw_sources(name)}, quiet_seconds)
        report = rollups_plan(
            client=client,
            database=database,
            tables=names,
            first=first,
            last=last,
            include_live=include_live,
            settle=settle,
            force=force,
            now=timezone.now(),
        )
        todo = report.planned if max_partitions is None else report.planned[:max_partitions]
        if on_plan:
            on_plan(report, len(todo))
        for name in names:
            plans = [plan for plan in todo if plan.table == name]
            if plans:
                _table_rebuild(
                    client=client,
                    database=database,
                    name=name,
                    plans=plans,
                    dry_run=dry_run,
                    report=report,
                    on_partition=on_partition,
                    partition_lease=partition_lease,
                    quiet=quiet,
                )
        return report
    finally:
        client.disconnect()


def _table_rebuild(
    *,
    client: Any,
    database: str,
    name: str,
    plans: Sequence[PartitionPlan],
    dry_run: bool,
    report: RebuildReport,
    on_partition: Callable[[PartitionResult], None] | None,
    partition_lease: Any,
    quiet: _Quiet,
) -> None:
    columns = _output_columns(client, database, name)
    if dry_run:
        for index, plan in enumerate(plans):
            statements = (staging_statements(database, name) if index == 0 else []) + [
                _staging_clear(database, plan),
                *insert_statements(database, plan, columns),
                swap_statement(database, plan, staged_rows=1),
                _staging_clear(database, plan),
            ]
            result = PartitionResult(plan, 0, 0, 0.0, tuple(statements))
            report.done.append(result)
            if on_partition:
                on_partition(result)
        return
    key = f"clickhouse_rollups_rebuild/{database}/{name}"
    ttl = int(settings.CLICKHOUSE_REBUILD_LEASE_SECONDS)
    with partition_lease(key, ttl_seconds=ttl) as lease:
        if not lease.acquired:
            raise RebuildError(
                f"another rebuild of {name} is running (lease {key}); wait for it to finish,"
                f" or, if it was killed, {ttl} s for its lease to expire"
            )
        for statement in staging_statements(database, name):
            client.execute(statement)
        try:
            for plan in plans:
                result = _partition_rebuild(client, database, plan, columns=columns, lease=lease, quiet=quiet)
                RollupPartitionRebuild.objects.update_or_create(
                    database=database,
                    table=name,
                    partition=plan.partition,
                    defaults={
                        "definition": warehouse.rollup_definition(name),
                        "rows": result.rows,
                        "attempts": result.attempts,
                        "duration_seconds": result.seconds,
                        "rebuilt_at": timezone.now(),
                    },
                )
                report.done.append(result)
                if on_partition:
                    on_partition(result)
        finally:
            client.execute(f"DROP TABLE IF EXISTS {_qualified(database, name + STAGING_SUFFIX)}")
