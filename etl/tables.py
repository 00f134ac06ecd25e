"""What is exported: the ClickHouse tables and the partitions (a UTC day, or one hour of it).

A table is described by name only (plus the column its partitions are cut on); its columns are
read from ClickHouse when an export runs (see ``etl.schema``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from analytics_platform import warehouse


@dataclass(frozen=True)
class ExportTable:
    """One exported table.

    ``name`` names the BigQuery table and the local archive folder; ``time_column`` is the
    ClickHouse ``DateTime``/``DateTime64``/``Date`` column that decides which day (and hour) a row
    belongs to, and is also the BigQuery partitioning column. Hourly exports need a time of day, so
    they are refused for ``Date`` columns (set ``hourly=False``). ``final`` reads with ``FINAL``:
    for Replacing/Collapsing engines, so an archive never holds a row twice because ClickHouse had
    not merged its parts yet.
    """

    name: str
    clickhouse_table: str
    time_column: str
    hourly: bool = True
    final: bool = False
    description: str = ""


# The streams schema (streams/models.py): raw events by event time, and one row per closed view
# by the view's start (the bucket metrics count it in). Rollups are derived and not exported.
EXPORT_TABLES: dict[str, ExportTable] = {
    table.name: table
    for table in (
        ExportTable(
            name="events",
            clickhouse_table=warehouse.EVENTS,
            time_column="ts",
            description="Every accepted player event, partitioned by event time (UTC).",
        ),
        ExportTable(
            name="view_summaries",
            clickhouse_table=warehouse.VIEW_SUMMARIES,
            time_column="start_ts",
            final=True,  # ReplacingMergeTree
            description="One row per closed view with its QoE figures, partitioned by view start (UTC).",
        ),
    )
}


class UnknownTable(KeyError):
    pass


def export_table_get(name: str) -> ExportTable:
    try:
        return EXPORT_TABLES[name]
    except KeyError:
        raise UnknownTable(f"unknown export table {name!r}; known: {sorted(EXPORT_TABLES)}") from None


@dataclass(frozen=True, order=True)
class Partition:
    """A closed UTC day, or one hour of it; ``[start, end)`` is what it covers."""

    day: dt.date
    hour: int | None = None

    def __post_init__(self) -> None:
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise ValueError(f"hour must be 0..23, got {self.hour}")

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(self.day, dt.time(self.hour or 0), tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        return self.start + (dt.timedelta(days=1) if self.hour is None else dt.timedelta(hours=1))

    @property
    def label(self) -> str:
        return self.day.isoformat() if self.hour is None else f"{self.day.isoformat()}T{self.hour:02d}"

    def is_closed(self, now: dt.datetime) -> bool:
        return self.end <= now

    def lease_key(self, table: str) -> str:
        return f"{table}/{self.label}"


def days_between(first: dt.date, last: dt.date) -> list[dt.date]:
    """Every day from ``first`` to ``last`` inclusive."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]


def previous_closed_day(now: dt.datetime) -> dt.date:
    return (now.astimezone(dt.UTC) - dt.timedelta(days=1)).date()


def previous_closed_hour(now: dt.datetime) -> Partition:
    last = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)
    return Partition(day=last.date(), hour=last.hour)
