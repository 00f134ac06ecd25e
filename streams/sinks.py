"""The ClickHouse sink: idempotent, offset-tracked inserts of the processor's rows.

Quix sinks are at-least-once: after a crash the messages since the last committed offset are
processed again and their rows reach ``write()`` a second time. Exactly-once effect without Kafka
transactions comes from the rows themselves: each row carries the Kafka partition and offset of the
message that produced it, a partition's rows are inserted in offset order with one INSERT per table
per checkpoint, and before writing a batch that does not directly follow what this process last
wrote (a restart, a new assignment, a replay after backpressure) the sink asks ClickHouse for the
largest offset the table already holds for that partition and drops rows at or below it. The
processor is deterministic and its state is restored as of the committed offset, so a replayed
message yields the same rows as the first time, and skipping them by offset is exact whatever the
batch boundaries were. (Insert-deduplication tokens would need identical batch boundaries.)

When ClickHouse is unreachable the sink raises ``SinkBackpressureError``: Quix pauses the
partitions, drops the checkpoint's state changes, seeks back to the committed offsets and retries
after ``retry_after`` seconds, so nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from clickhouse_driver import Client
from prometheus_client import Counter
from quixstreams.sinks.base import BatchingSink, SinkBackpressureError, SinkBatch

from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, Output

logger = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("streams_clickhouse_rows_total", "Rows inserted into ClickHouse", ["table"])
ROWS_SKIPPED = Counter(
    "streams_clickhouse_rows_skipped_total", "Replayed rows skipped because ClickHouse already had them", ["table"]
)
SINK_FAILURES = Counter("streams_clickhouse_failures_total", "Failed ClickHouse writes (retried)")

_TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (("events", EVENT_COLUMNS), ("view_summaries", VIEW_COLUMNS))


class ClickHouseSink(BatchingSink):
    """Writes ``Output.events`` to ``events`` and ``Output.views`` to ``view_summaries``."""

    def __init__(self, *, client_factory: Callable[[], Client], retry_after: float = 5.0) -> None:
        super().__init__()
        self._client_factory = client_factory
        self._client: Client | None = None
        self._retry_after = retry_after
        # (table, partition) -> the last source offset known to be fully stored in that table
        self._stored: dict[tuple[str, int], int] = {}

    def setup(self) -> None:
        """Connect early so a wrong address fails the worker at start, not at the first checkpoint."""
        self._client_get().execute("SELECT 1")

    def _client_get(self) -> Client:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def write(self, batch: SinkBatch) -> None:
        partition = batch.partition
        outputs: list[Output] = [item.value for item in batch]
        if not outputs:
            return
        first, last = batch.start_offset, outputs[-1].offset
        try:
            for table, columns in _TABLES:
                rows = [row for output in outputs for row in getattr(output, _ATTR[table])]
                self._table_write(table, columns, partition, first=first, last=last, rows=rows)
        except SinkBackpressureError:
            raise
        except Exception as exc:  # any driver/network/server error: retry the whole checkpoint later
            SINK_FAILURES.inc()
            logger.warning(
                "clickhouse write failed; backing off",
                extra={"partition": partition, "retry_after": self._retry_after, "error": repr(exc)},
            )
            self._stored = {k: v for k, v in self._stored.items() if k[1] != partition}
            self._disconnect()
            raise SinkBackpressureError(retry_after=self._retry_after) from exc

    def _table_write(
        self, table: str, columns: tuple[str, ...], partition: int, *, first: int, last: int, rows: list[Any]
    ) -> None:
        stored = self._stored.get((table, partition))
        if stored is None or first != stored + 1:
            stored = self._stored_offset(table, partition)
        if rows and rows[0][-1] <= stored:
            fresh = [row for row in rows if row[-1] > stored]
            ROWS_SKIPPED.labels(table).inc(len(rows) - len(fresh))
            rows = fresh
        if rows:
            self._insert(table, columns, rows)
            ROWS_WRITTEN.labels(table).inc(len(rows))
        self._stored[(table, partition)] = max(last, stored)

    def _stored_offset(self, table: str, partition: int) -> int:
        """The largest source offset ``table`` holds for ``partition`` (-1 when none)."""
        started = time.monotonic()
        result = self._client_get().execute(
            f"SELECT max(kafka_offset), count() FROM {table} WHERE kafka_partition = %(p)s",  # noqa: S608 -- constant table names
            {"p": partition},
        )
        offset, count = result[0]
        logger.info(
            "clickhouse progress read",
            extra={
                "table": table,
                "partition": partition,
                "offset": offset if count else None,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        return int(offset) if count else -1

    def _insert(self, table: str, columns: Sequence[str], rows: list[Any]) -> None:
        self._client_get().execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES",
            list(zip(*rows, strict=True)),
            columnar=True,
        )

    def _disconnect(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            except Exception:  # already failing; a fresh client is made next time
                logger.debug("disconnect failed", exc_info=True)
            self._client = None


_ATTR = {"events": "events", "view_summaries": "views"}
