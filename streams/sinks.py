"""The ClickHouse sink: idempotent, offset-tracked inserts of the processor's rows.

Quix sinks are at-least-once: after a crash the messages since the last committed offset are
processed again and their rows reach the sink a second time. Exactly-once effect without Kafka
transactions comes from the rows themselves: each row carries the Kafka partition and offset of the
message that produced it (and the topic's id: a recreated topic starts again at offset 0), a
partition's rows are inserted in offset order, and before writing rows
that do not directly follow what this process last wrote (a restart, a new assignment, a replay
after backpressure) the sink asks ClickHouse for the largest offset the table already holds for
that partition and drops rows at or below it. The processor is deterministic and its state is
restored as of the committed offset, so a replayed message yields the same rows as the first time,
and skipping them by offset is exact whatever the batch boundaries were. (Insert-deduplication
tokens would need identical batch boundaries across runs, which Quix checkpoints do not give.)

Inserts run on a writer thread, in chunks of about ``chunk_rows`` rows (all partitions in one
INSERT per table; the two tables are written side by side, each on its own connection), while the
main thread keeps processing; ``flush()`` (each checkpoint, before offsets are committed) hands over
the rest and waits until everything is written. Rows written ahead of a commit that never happens
are simply skipped when replayed.

The checkpoint waits for that last write while the worker processes nothing, so the sink keeps it
small: a chunk also goes to the writer when it is ``chunk_seconds`` old, and shortly before the next
checkpoint is due (as long before as the previous write took), whenever the writer is idle; and
``handoff()`` lets the worker start the last write before its other checkpoint work.

Rows are sent as ``INSERT ... FORMAT JSONCompactColumns <data>``: the data is inline in the query
text, encoded by orjson in C, and ClickHouse parses it in C++ (see ``json_columns_insert``).
clickhouse-driver's own columnar INSERT serialises every value in Python on this thread, which
shares the GIL with the processing thread and so cost the worker about a seventh of its CPU.

When ClickHouse fails, the writer stops writing (a later chunk must never land after a lost one:
the offset rule would then skip the lost rows) and ``flush()`` raises ``SinkBackpressureError``:
Quix pauses the partitions, drops the checkpoint's state changes, seeks back to the committed
offsets and retries after ``retry_after`` seconds. Nothing is lost, nothing is written twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from clickhouse_driver import Client
from prometheus_client import Counter
from quixstreams.sinks.base import BatchingSink, SinkBackpressureError

from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, Output

logger = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("streams_clickhouse_rows_total", "Rows inserted into ClickHouse", ["table"])
ROWS_SKIPPED = Counter(
    "streams_clickhouse_rows_skipped_total", "Replayed rows skipped because ClickHouse already had them", ["table"]
)
SINK_FAILURES = Counter("streams_clickhouse_failures_total", "Failed ClickHouse writes (retried)")

_TABLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("events", "events", EVENT_COLUMNS),
    ("view_summaries", "views", VIEW_COLUMNS),
)

# The DateTime64(3) columns of the rows (epoch milliseconds there). ClickHouse reads a JSON
# integer for a DateTime64 as *seconds*, so they are sent as seconds with a fraction (see below).
DATETIME64_COLUMNS = frozenset({"ts", "client_ts", "received_at", "start_ts", "end_ts"})
_TRANSPOSE_BLOCK = 2000  # rows per C-level transposition step in ``json_columns_insert``
_ERROR_TEXT_LIMIT = 2000  # a server error may quote the query, which holds the whole chunk


# ``optimize_on_insert`` collapses each inserted block as a merge would: for the Summing/Replacing
# targets of the materialized views that repeats the views' own GROUP BY, and ``events`` (plain
# MergeTree) and ``view_summaries`` (one row per session; merges still replace) have nothing to collapse. Off,
# the embedded server spends 27% less CPU per event on an INSERT with all views (bench_sink.py);
# the sums are the same, since queries aggregate over parts anyway.
INSERT_SETTINGS = "SETTINGS optimize_on_insert = 0"


def json_columns_insert(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], topic_id: str) -> str:
    """``INSERT INTO table (columns, kafka_topic_id) FORMAT JSONCompactColumns`` + the rows inline.

    ClickHouse's SQL parser stops at the format name and hands the rest of the query text to the
    format's stream parser, so the data is not limited by ``max_query_size`` and is parsed in C++,
    on any server that speaks the native protocol. Columns, not rows: the rows are transposed and
    each column encoded by orjson in C; only the timestamp columns are touched in Python.

    In short C calls: this runs on the sink's writer thread, and the worker's main thread can take
    the GIL back only between them. One ``zip(*rows)`` over a 50k-row chunk held it for 0.2-0.7 s,
    one ``orjson.dumps`` of all columns for 65 ms; here the longest step is a few ms.

    Timestamps: ``ms / 1000`` is the double nearest to the exact decimal, and its shortest repr
    (which orjson prints) has at most three decimals for any epoch-ms below 2**53, so ClickHouse's
    decimal parser reads back the exact millisecond. ``table`` and ``columns`` are code constants.
    """
    if rows and len(rows[0]) != len(columns):
        raise ValueError(f"{table}: rows of {len(rows[0])} values for {len(columns)} columns")
    # A block of rows at a time: one pass over the rows, where gathering each column on its own took
    # a pass per column over rows long gone from the CPU cache (0.82x the encoding CPU per row).
    gathered: list[list[Any]] = [[] for _ in columns]
    for start in range(0, len(rows), _TRANSPOSE_BLOCK):
        for column, values in zip(gathered, zip(*rows[start : start + _TRANSPOSE_BLOCK], strict=True), strict=True):
            column.extend(values)
    encoded = []
    for name, column in zip(columns, gathered, strict=True):
        encoded.append(orjson.dumps([ms / 1000 for ms in column] if name in DATETIME64_COLUMNS else column))
    encoded.append(orjson.dumps([topic_id] * len(rows)))
    head = f"INSERT INTO {table} ({', '.join(columns)}, kafka_topic_id) {INSERT_SETTINGS} FORMAT JSONCompactColumns\n"
    return head + "[" + ",".join(part.decode() for part in encoded) + "]"


class _Chunk:
    """Outputs of one topic, per partition in offset order; written as one INSERT per table.

    One INSERT for all partitions, not one per partition: every INSERT makes a part in the table
    and in each materialized view's target, and the parts must then be merged; a worker owns
    several partitions, so per-partition inserts multiplied the parts and the server's work.
    """

    __slots__ = ("outputs", "rows", "started", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.outputs: dict[int, list[Output]] = {}
        self.rows = 0
        self.started = time.monotonic()


class ClickHouseSink(BatchingSink):
    """Writes ``Output.events`` to ``events`` and ``Output.views`` to ``view_summaries``."""

    def __init__(
        self,
        *,
        client_factory: Callable[[], Client],
        topic_id_get: Callable[[str], str] = lambda topic: "",
        retry_after: float = 5.0,
        chunk_rows: int = 50_000,
        chunk_seconds: float = 1.5,
        commit_interval: float | None = None,
    ) -> None:
        """``commit_interval``: the worker's checkpoint interval, for the handoff ahead of each one."""
        super().__init__()
        self._client_factory = client_factory
        self._topic_id_get = topic_id_get
        self._topic_ids: dict[str, str] = {}
        self._clients: dict[str, Client] = {}  # one connection per table: the tables are written side by side
        self._retry_after = retry_after
        self._chunk_rows = chunk_rows
        self._chunk_seconds = chunk_seconds
        self._commit_interval = commit_interval
        self._chunk: _Chunk | None = None
        # When the next checkpoint is expected (monotonic; Quix counts its interval from the end of
        # the previous commit, so the end of our flush is a slightly early estimate).
        self._checkpoint_due = time.monotonic() + (commit_interval or 0.0)
        self._last_write_seconds = 0.0  # how long the writer took for its last chunk
        # (table, partition) -> the last source offset known to be fully stored in that table;
        # touched by the writer threads only (each table's own keys).
        self._stored: dict[tuple[str, int], int] = {}
        self._queue: queue.Queue[_Chunk] = queue.Queue()
        self._failed: BaseException | None = None
        self._side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-sink-views")
        self._writer = threading.Thread(target=self._write_loop, name="clickhouse-sink", daemon=True)
        self._writer.start()

    def setup(self) -> None:
        """Connect early so a wrong address fails the worker at start, not at the first checkpoint."""
        client = self._client_factory()
        client.execute("SELECT 1")
        client.disconnect()

    def add(  # noqa: PLR0917 -- Quix's BatchingSink.add signature
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        chunk = self._chunk
        if chunk is None or chunk.topic != topic:
            if chunk is not None:
                self._queue.put(chunk)
            chunk = self._chunk = _Chunk(topic)
        outputs = chunk.outputs.get(partition)
        if outputs is None:
            chunk.outputs[partition] = [value]
        else:
            outputs.append(value)
        chunk.rows += len(value.events) + len(value.views)
        # A chunk goes to the writer when it is full; or, when the writer is idle, once it is
        # ``chunk_seconds`` old or the next checkpoint is closer than the last write took: INSERTs
        # stay large (each costs the server a part per table and view), yet the checkpoint, which
        # waits for the last one, finds little left to write.
        if chunk.rows >= self._chunk_rows:
            self.handoff()
        elif not self._queue.unfinished_tasks:
            now = time.monotonic()
            if now - chunk.started >= self._chunk_seconds or (
                self._commit_interval
                and now >= self._checkpoint_due - min(self._last_write_seconds, self._commit_interval / 2)
            ):
                self.handoff()

    def handoff(self) -> None:
        """Give the rows gathered so far to the writer now (``flush`` would, later)."""
        if self._chunk is not None:
            self._queue.put(self._chunk)
            self._chunk = None

    def write(self, batch: Any) -> None:  # pragma: no cover -- add/flush are overridden
        raise NotImplementedError

    def flush(self) -> None:
        """Hand over what is left and wait for the writer; raise backpressure if anything failed."""
        self.handoff()
        self._queue.join()
        if self._commit_interval:
            self._checkpoint_due = time.monotonic() + self._commit_interval
        if self._failed is not None:
            error, self._failed = self._failed, None
            raise SinkBackpressureError(retry_after=self._retry_after) from error

    def _write_loop(self) -> None:
        while True:
            chunk = self._queue.get()
            try:
                if self._failed is None:
                    started = time.monotonic()
                    self._chunk_write(chunk)
                    self._last_write_seconds = time.monotonic() - started
            except Exception as exc:  # noqa: BLE001 -- any driver/network/server error: retry the checkpoint later
                SINK_FAILURES.inc()
                logger.warning(
                    "clickhouse write failed; backing off",
                    extra={
                        "partitions": sorted(chunk.outputs),
                        "retry_after": self._retry_after,
                        "error": repr(exc)[:_ERROR_TEXT_LIMIT],
                    },
                )
                self._failed = exc
                self._stored.clear()
                self._disconnect()
            finally:
                self._queue.task_done()

    def _chunk_write(self, chunk: _Chunk) -> None:
        topic_id = self._topic_ids.get(chunk.topic)
        if topic_id is None:
            topic_id = self._topic_ids[chunk.topic] = self._topic_id_get(chunk.topic)
        # Both tables at once: the server spends most of an INSERT's time in its own threads (parsing,
        # the materialized views, writing parts), and the checkpoint waits for the slower of the two.
        (events_table, events_attr, events_columns), (views_table, views_attr, views_columns) = _TABLES
        side = self._side.submit(self._table_write, views_table, views_attr, views_columns, chunk, topic_id)
        try:
            self._table_write(events_table, events_attr, events_columns, chunk, topic_id)
        finally:
            side.result()  # never leave a write running into the next chunk; re-raises its failure

    def _table_write(self, table: str, attr: str, columns: Sequence[str], chunk: _Chunk, topic_id: str) -> None:
        rows: list[Any] = []
        progress: list[tuple[tuple[str, int], int]] = []
        for partition, outputs in chunk.outputs.items():
            first, last = outputs[0].offset, outputs[-1].offset
            key = (table, partition)
            stored = self._stored.get(key)
            if stored is None or first != stored + 1:
                stored = self._stored_offset(table, topic_id, partition)
            part_rows = [row for output in outputs for row in getattr(output, attr)]
            if part_rows and part_rows[0][-1] <= stored:
                fresh = [row for row in part_rows if row[-1] > stored]
                ROWS_SKIPPED.labels(table).inc(len(part_rows) - len(fresh))
                part_rows = fresh
            rows += part_rows
            progress.append((key, max(last, stored)))
        if rows:
            self._insert(table, columns, rows, topic_id)
            ROWS_WRITTEN.labels(table).inc(len(rows))
        self._stored.update(progress)

    def _stored_offset(self, table: str, topic_id: str, partition: int) -> int:
        """The largest source offset ``table`` holds for ``partition`` of this topic (-1 when none)."""
        started = time.monotonic()
        result = self._client_get(table).execute(
            f"SELECT max(kafka_offset), count() FROM {table}"  # noqa: S608 -- constant table names
            " WHERE kafka_partition = %(p)s AND kafka_topic_id = %(t)s",
            {"p": partition, "t": topic_id},
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

    def _client_get(self, table: str) -> Client:
        client = self._clients.get(table)
        if client is None:
            client = self._clients[table] = self._client_factory()
        return client

    def _insert(self, table: str, columns: Sequence[str], rows: list[Any], topic_id: str) -> None:
        # No parameters: clickhouse-driver sends the text as is (nothing to substitute or escape).
        self._client_get(table).execute(json_columns_insert(table, columns, rows, topic_id))

    def _disconnect(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            try:
                client.disconnect()
            except Exception:  # already failing; a fresh client is made next time
                logger.debug("disconnect failed", exc_info=True)
