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

Failures are classified (streams/clickhouse_errors.py). A *retryable* one (server down, network,
timeouts, overload, a schema not migrated yet) or an *unknown* one stops the writer (a later chunk
must never land after a lost one: the offset rule would then skip the lost rows) and ``flush()``
raises ``SinkBackpressureError``: Quix pauses the partitions, drops the checkpoint's state changes,
seeks back to the committed offsets and retries after ``retry_after`` seconds. Nothing is lost,
nothing is written twice; ``streams_clickhouse_failing_seconds`` tells how long it has lasted.

A *deterministic* one (a value a column's type cannot take, a block over the partition limit) would
fail every retry and stop the pipeline for every client. The sink bisects the block instead, halves
written left before right (``_insert_isolating``), until the refused rows stand alone; each is
dead-lettered (reason ``clickhouse_rejected``, stage ``sink``, the row as JSON by column name, the
server's error) and the rest is written. Order is what keeps the effect exactly-once: the halves
keep each partition's rows in offset order, and a rejected row's dead letter is acknowledged by the
broker before any later row of the table is inserted, since from then on a replay skips it.

Partitions per INSERT: ClickHouse refuses a block touching more than
``max_partitions_per_insert_block`` (100) partitions of any table it writes, materialized-view
targets included (``events`` and both minute rollups are partitioned by day). A chunk is therefore
cut into consecutive blocks of at most ``partitions_per_insert`` (95) UTC days
(``partition_limit_split``); the day of ``ts`` / ``start_ts`` bounds the partitions of every table
reached. 95: the event-time window ingest accepts (the 90-day retention plus a small future
allowance) spans about 92 UTC days, so accepted traffic is never split, while what predates that
window (a backlog still in the topic, replayed dead letters) is; the margin below 100 is for a
view keyed on another, near-now column (``received_at``). Splitting rather than raising the server
setting: the sink cannot rely on the server's profile (production's may be stricter), the limit
stays a guard against a bad partition key, and the common chunk (a day or two) is still one
INSERT. Should the server refuse a block anyway (a lower limit), that error is deterministic and
bisection splits the block until it passes.

A split can cut one message's rows across INSERTs (a message spanning 150 days; isolation within a
message), and the offset rule alone would skip the rest of a message cut by a crash. So on replay
the rows at exactly the stored offset are matched by key (``event_id``, ``session_id``) against what
the table holds at that offset, and the missing ones are written (``_replayed_drop``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter as Multiset
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

import orjson
from clickhouse_driver import Client
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind
from prometheus_client import Counter, Gauge
from quixstreams.sinks.base import BatchingSink, SinkBackpressureError

from analytics_platform import tracing, warehouse
from streams.clickhouse_errors import FailureClass, RowEncodingError, error_code, failure_classify
from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, VIEW_MINUTE_COLUMNS, Output
from streams.sink_dead_letters import RejectedRows, rejected_row_dead_letter

logger = logging.getLogger(__name__)

ROWS_WRITTEN = Counter("streams_clickhouse_rows_total", "Rows inserted into ClickHouse", ["table"])
ROWS_SKIPPED = Counter(
    "streams_clickhouse_rows_skipped_total", "Replayed rows skipped because ClickHouse already had them", ["table"]
)
ROWS_REJECTED = Counter(
    "streams_clickhouse_rows_rejected_total", "Rows ClickHouse refused deterministically (dead-lettered)", ["table"]
)
SINK_FAILURES = Counter(
    "streams_clickhouse_failures_total",
    "Failed ClickHouse writes by class (streams/clickhouse_errors.py): retryable and unknown ones are retried,"
    " deterministic ones isolated",
    ["class"],
)
FAILING_SECONDS = Gauge(
    "streams_clickhouse_failing_seconds", "How long the ClickHouse sink has been failing continuously (0 when healthy)"
)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class _Table:
    """A table the sink writes, with what isolation and the partition limit need to know of it."""

    name: str
    attr: str  # the ``Output`` attribute holding its rows
    columns: tuple[str, ...]
    key: str  # a column that tells a message's rows apart (completing a partly written message)
    day_column: str  # the time column whose UTC day bounds the partitions an INSERT touches

    @property
    def key_index(self) -> int:
        return self.columns.index(self.key)

    @property
    def day_index(self) -> int:
        return self.columns.index(self.day_column)


# Partitions touched by an INSERT, per table and materialized-view target (streams/models.py):
#   events: toYYYYMMDD(ts) -> metrics_event_type_minute: toYYYYMMDD(bucket of ts), event_video_hour,
#     event_dimension_hour and metrics_event_type_hour: toYYYYMM
#   view_summaries: toYYYYMM(start_ts) -> metrics_view_minute: toYYYYMMDD(bucket of start_ts),
#     view_rollup_hour, metrics_view_hour and metrics_view_video_day: toYYYYMM
# Every one is a function of the UTC day of ``ts`` / ``start_ts`` (months are unions of days; past
# 2106 the rollups' DateTime buckets saturate to one day), so bounding the distinct days of a block
# bounds the partitions of every table it reaches.
_TABLES: tuple[_Table, ...] = (
    _Table(warehouse.EVENTS, "events", EVENT_COLUMNS, "event_id", "ts"),
    _Table(warehouse.VIEW_SUMMARIES, "views", VIEW_COLUMNS, "session_id", "start_ts"),
    # view_minutes: toYYYYMMDD(minute_ts), no materialized view. Its key is not unique within a
    # message (a view's minutes share the session): the boundary match counts them (a multiset).
    _Table(warehouse.VIEW_MINUTES, "view_minutes", VIEW_MINUTE_COLUMNS, "session_id", "minute_ts"),
)
# Isolation and the splitter read a row's source from its last two values.
assert all(table.columns[-2:] == ("kafka_partition", "kafka_offset") for table in _TABLES)

# The DateTime64(3) columns of the rows (epoch milliseconds there). ClickHouse reads a JSON
# integer for a DateTime64 as *seconds*, so they are sent as seconds with a fraction (see below).
DATETIME64_COLUMNS = frozenset({"ts", "client_ts", "received_at", "start_ts", "end_ts", "minute_ts"})
_TRANSPOSE_BLOCK = 2000  # rows per C-level transposition step in ``json_columns_insert``
_ERROR_TEXT_LIMIT = 2000  # a server error may quote the query, which holds the whole chunk


# ``optimize_on_insert`` collapses each inserted block as a merge would: for the Summing/Replacing
# targets of the materialized views that repeats the views' own GROUP BY, and ``events`` (plain
# MergeTree) and ``view_summaries`` (one row per session; merges still replace) have nothing to collapse. Off,
# the embedded server spends 27% less CPU per event on an INSERT with all views (bench_sink.py);
# the sums are the same, since queries aggregate over parts anyway.
INSERT_SETTINGS = "SETTINGS optimize_on_insert = 0"
# Cluster mode: the INSERT reaches a Distributed table (analytics_platform/warehouse.py). Forwarded
# in the foreground, it returns only once every shard holds its rows, so the offsets the sink
# reads back after a failure are rows really stored, not rows waiting in a node's send queue.
CLUSTER_INSERT_SETTINGS = ", insert_distributed_sync = 1"


def insert_settings() -> str:
    """The SETTINGS clause of the sink's INSERTs in the configured mode."""
    return INSERT_SETTINGS + (CLUSTER_INSERT_SETTINGS if warehouse.cluster_name() else "")


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
    head = f"INSERT INTO {table} ({', '.join(columns)}, kafka_topic_id) {insert_settings()} FORMAT JSONCompactColumns\n"
    return head + "[" + ",".join(part.decode() for part in encoded) + "]"


def partition_limit_split(rows: list[Any], day_index: int, limit: int) -> list[list[Any]]:
    """``rows`` (per partition in offset order) as consecutive blocks of at most ``limit`` UTC days each.

    Consecutive, so each Kafka partition's rows still reach ClickHouse in offset order across the
    blocks (what the offset rule needs). Within one source message (one offset) the order is free:
    a message's rows on days the current block already has go first, then the others by day, so a
    message spanning many days (one POST of 150 days) is cut into runs of whole days and the
    traffic around it shares its blocks. A message cut across two blocks is completed by key on
    replay (``ClickHouseSink._replayed_drop``).

    A message can never share a block with another message wider than ``limit`` days, so a stream
    of such messages costs about an INSERT each: that is the price of per-partition order, and why
    the limit is set to hold the whole accepted event-time window.

    The common chunk spans a day or two: two C-level passes (min, max) decide that, with no copy.
    """
    times = list(map(itemgetter(day_index), rows))
    if not times or max(times) // DAY_MS - min(times) // DAY_MS < limit:
        return [rows]
    blocks: list[list[Any]] = []
    block: list[Any] = []
    block_days: set[int] = set()
    for _, message in groupby(rows, key=itemgetter(-2, -1)):  # (kafka_partition, kafka_offset)
        message_rows = list(message)
        known = [row for row in message_rows if row[day_index] // DAY_MS in block_days]
        new = sorted(
            (row for row in message_rows if row[day_index] // DAY_MS not in block_days), key=itemgetter(day_index)
        )
        block += known
        for row in new:
            day = row[day_index] // DAY_MS
            if day not in block_days and len(block_days) >= limit:
                blocks.append(block)
                block, block_days = [], set()
            block_days.add(day)
            block.append(row)
    blocks.append(block)
    return blocks


class _Chunk:
    """Outputs of one topic, per partition in offset order; written as one INSERT per table.

    One INSERT for all partitions, not one per partition: every INSERT makes a part in the table
    and in each materialized view's target, and the parts must then be merged; a worker owns
    several partitions, so per-partition inserts multiplied the parts and the server's work.
    """

    __slots__ = ("links", "outputs", "rows", "started", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.links: list[SpanContext] = []  # the sampled process spans of its messages (tracing on)
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
        rejected_rows: RejectedRows | None = None,
        partitions_per_insert: int = 95,
    ) -> None:
        """``commit_interval``: the worker's checkpoint interval, for the handoff ahead of each one.

        ``rejected_rows``: where the dead letters of rows ClickHouse refuses go; without it such a
        failure is retried like any other (backpressure). ``partitions_per_insert``: the most UTC
        days (hence partitions of any table written) one INSERT may span; below the server's
        ``max_partitions_per_insert_block`` (100 by default).
        """
        super().__init__()
        if partitions_per_insert < 1:
            raise ValueError("partitions_per_insert must be at least 1")
        self._rejected_rows = rejected_rows
        self._partitions_per_insert = partitions_per_insert
        self._unflushed: dict[str, bool] = {}  # table -> dead letters sent since the last flush
        # Monotonic time of the first failure since the last successful chunk (None: healthy).
        self._failing_since: float | None = None
        FAILING_SECONDS.set_function(self.failing_seconds)
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
        chunk.rows += len(value.events) + len(value.views) + len(value.view_minutes)
        if tracing.ENABLED and len(chunk.links) < tracing.MAX_LINKS:
            link = tracing.current_link()
            if link is not None:
                chunk.links.append(link)
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

    def failing_seconds(self) -> float:
        """How long writes have been failing continuously (0 when the last chunk was written)."""
        since = self._failing_since
        return 0.0 if since is None else time.monotonic() - since

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
                    self._failing_since = None
            except Exception as exc:  # whatever failed (classified below), the checkpoint is retried later
                failure = failure_classify(exc)
                SINK_FAILURES.labels(failure).inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                # Unknown errors are retried too (streams/clickhouse_errors.py says why), but loudly,
                # with the traceback: someone has to classify them.
                logger.log(
                    logging.ERROR if failure is FailureClass.UNKNOWN else logging.WARNING,
                    "clickhouse write failed; backing off",
                    exc_info=failure is FailureClass.UNKNOWN,
                    extra={
                        "partitions": sorted(chunk.outputs),
                        "retry_after": self._retry_after,
                        "failure_class": str(failure),
                        "code": error_code(exc),
                        "failing_seconds": round(self.failing_seconds(), 1),
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
        events_table, views_table, minutes_table = _TABLES
        side = self._side.submit(self._tables_write, (views_table, minutes_table), chunk, topic_id)
        try:
            self._table_write(events_table, chunk, topic_id)
        finally:
            side.result()  # never leave a write running into the next chunk; re-raises its failure

    def _tables_write(self, tables: tuple[_Table, ...], chunk: _Chunk, topic_id: str) -> None:
        for table in tables:  # the two small tables, one after the other on the side thread
            self._table_write(table, chunk, topic_id)

    def _table_write(self, table: _Table, chunk: _Chunk, topic_id: str) -> None:
        with self._write_span(table.name, chunk) as span:
            rows: list[Any] = []
            progress: list[tuple[tuple[str, int], int]] = []
            for partition, outputs in chunk.outputs.items():
                first, last = outputs[0].offset, outputs[-1].offset
                key = (table.name, partition)
                stored = self._stored.get(key)
                if stored is None or first != stored + 1:
                    stored = self._stored_offset(table.name, topic_id, partition)
                part_rows = [row for output in outputs for row in getattr(output, table.attr)]
                if part_rows and part_rows[0][-1] <= stored:
                    part_rows = self._replayed_drop(table, topic_id, partition, stored, part_rows)
                rows += part_rows
                progress.append((key, max(last, stored)))
            if span is not None:
                span.set_attribute("analytics.rows", len(rows))
            if rows:
                # Blocks in order, each written (or its bad rows isolated) before the next: a
                # partition's later rows never land before its earlier ones.
                for block in partition_limit_split(rows, table.day_index, self._partitions_per_insert):
                    self._insert_isolating(table, block, topic_id, chunk.topic)
                # The chunk's progress is about to be trusted (and its offsets committed): its dead
                # letters must be acknowledged first.
                self._dead_letters_flush(table.name)
            self._stored.update(progress)

    def _write_span(self, table: str, chunk: _Chunk) -> AbstractContextManager[trace.Span | None]:
        """A chunk's write of one table, linked to the process spans of its messages (tracing on).

        A root span: one INSERT stores the rows of many messages, each in a trace of its own.
        """
        if not tracing.ENABLED:
            return nullcontext()
        return tracing.tracer.start_as_current_span(
            f"clickhouse write {table}",
            context=Context(),
            kind=SpanKind.INTERNAL,
            links=tracing.links_of(chunk.links),
            attributes={"db.system.name": "clickhouse", "db.collection.name": table},
        )

    def _replayed_drop(self, table: _Table, topic_id: str, partition: int, stored: int, rows: list[Any]) -> list[Any]:
        """``rows`` (one partition, offset order) less those ClickHouse already has.

        Rows below the stored offset are dropped by offset alone. Rows *at* it belong to the last
        message written, which may have been written in part: its rows can be split across INSERTs
        (a message spanning more days than one INSERT may take, or cut by isolation), and the worker
        may have stopped in between. They are matched by key against what the table holds at that
        offset, so the rest of that message is written now, once.
        """
        fresh = [row for row in rows if row[-1] > stored]
        boundary = [row for row in rows if row[-1] == stored]
        if boundary:
            boundary = self._boundary_missing(table, topic_id, partition, stored, boundary)
        ROWS_SKIPPED.labels(table.name).inc(len(rows) - len(fresh) - len(boundary))
        return boundary + fresh

    def _boundary_missing(
        self, table: _Table, topic_id: str, partition: int, offset: int, rows: list[Any]
    ) -> list[Any]:
        keys = Multiset(
            str(key).lower()
            for (key,) in self._client_get(table.name).execute(
                f"SELECT toString({table.key}) FROM {table.name}"  # noqa: S608 -- constant table and column names
                " WHERE kafka_partition = %(p)s AND kafka_topic_id = %(t)s AND kafka_offset = %(o)s",
                {"p": partition, "t": topic_id, "o": offset},
            )
        )
        missing = []
        index = table.key_index
        for row in rows:
            key = str(row[index]).lower()
            if keys[key] > 0:
                keys[key] -= 1  # a multiset: two rows of one message with one key are both kept
            else:
                missing.append(row)
        return missing

    def _insert_isolating(self, table: _Table, rows: list[Any], topic_id: str, topic: str) -> None:
        """INSERT ``rows``; on a deterministic failure, bisect until the refused rows are found.

        The halves are written left then right, each fully (its own bad rows isolated) before the
        next, so a partition's rows still land in offset order. One bad row among n costs about
        2·log2(n) + 1 INSERTs: at each level the good half is written in one, the bad half fails
        and is split. A refused row is dead-lettered, and ``_block_insert`` waits for that dead
        letter's acknowledgement before writing anything after it.
        """
        stack = [rows]  # depth-first, left before right: the order of the rows
        while stack:
            block = stack.pop()
            try:
                self._block_insert(table, block, topic_id)
            except Exception as exc:
                if self._rejected_rows is None or failure_classify(exc) is not FailureClass.DETERMINISTIC:
                    raise
                SINK_FAILURES.labels(FailureClass.DETERMINISTIC).inc()
                if len(block) == 1:
                    self._reject(table, block[0], exc, topic)
                else:
                    middle = len(block) // 2
                    stack += (block[middle:], block[:middle])

    def _reject(self, table: _Table, row: Sequence[Any], error: BaseException, topic: str) -> None:
        assert self._rejected_rows is not None
        logger.warning(
            "clickhouse refused a row; dead-lettered",
            extra={
                "table": table.name,
                "partition": row[-2],
                "offset": row[-1],
                "code": error_code(error),
                "error": str(error)[:_ERROR_TEXT_LIMIT],
            },
        )
        self._rejected_rows.send(
            rejected_row_dead_letter(
                table=table.name,
                columns=table.columns,
                row=row,
                error=error,
                topic=topic,
                partition=int(row[-2]),
            ),
            channel=table.name,
        )
        self._unflushed[table.name] = True
        ROWS_REJECTED.labels(table.name).inc()

    def _dead_letters_flush(self, table: str) -> None:
        if self._unflushed.get(table) and self._rejected_rows is not None:
            self._rejected_rows.flush(channel=table)
            self._unflushed[table] = False

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

    def _block_insert(self, table: _Table, rows: list[Any], topic_id: str) -> None:
        # A rejected row's dead letter is acknowledged before any row after it lands: once a later
        # offset of its partition is stored, a replay would skip the rejected row for good.
        self._dead_letters_flush(table.name)
        self._insert(table.name, table.columns, rows, topic_id)
        ROWS_WRITTEN.labels(table.name).inc(len(rows))

    def _insert(self, table: str, columns: Sequence[str], rows: list[Any], topic_id: str) -> None:
        try:
            query = json_columns_insert(table, columns, rows, topic_id)
        except orjson.JSONEncodeError as exc:  # a value orjson refuses: the rows' fault, isolated like a parse error
            raise RowEncodingError(f"{table}: row not encodable: {exc}") from exc
        # No parameters: clickhouse-driver sends the text as is (nothing to substitute or escape).
        if not tracing.ENABLED:
            self._client_get(table).execute(query)
            return
        with tracing.tracer.start_as_current_span(
            f"INSERT {table}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "clickhouse",
                "db.operation.name": "INSERT",
                "db.collection.name": table,
                # The statement's shape: the rows are data, never recorded.
                "db.query.text": query[: query.index("\n")],
                "analytics.rows": len(rows),
            },
        ):
            self._client_get(table).execute(query)

    def _disconnect(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            try:
                client.disconnect()
            except Exception:  # already failing; a fresh client is made next time
                logger.debug("disconnect failed", exc_info=True)
