"""ClickHouseSink against the session's embedded ClickHouse server: exact values, offset skip, outages."""

from __future__ import annotations

import math
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from clickhouse_driver import Client, errors
from confluent_kafka import Producer
from prometheus_client import REGISTRY
from quixstreams.sinks.base import SinkBackpressureError

from analytics_platform import event_format, kafka, warehouse
from analytics_platform.clickhouse import client_get
from analytics_platform.devstack import processes
from streams import dead_letters
from streams.models import Event, ViewSummary
from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, VIEW_MINUTE_COLUMNS, Output, event_row
from streams.sink_dead_letters import RejectedRowsProducer
from streams.sinks import DATETIME64_COLUMNS, ClickHouseSink
from tests.streams.conftest import STREAM_TABLES, StreamEnv

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

TOPIC = "sink-test-topic"
TOPIC_ID = "sink-test-topic-id"
# Recent: the tables' TTLs drop rows older than 90 days (events) / 400 days (views) at insert.
NOW = int(time.time()) * 1000 + 123
TRICKY = 'quote " backslash \\ newline \n tab \t nul \x00 ctrl \x1f é 中文 😀 \u2028 ; SELECT 1 -- x'


@pytest.fixture
def tables(clickhouse_server: Any) -> Iterator[Client]:
    client = client_get()
    for table in STREAM_TABLES:
        client.execute(f"TRUNCATE TABLE {table}")
    yield client
    client.disconnect()


def _sink(factory: Callable[[], Client] = client_get, **kwargs: Any) -> ClickHouseSink:
    return ClickHouseSink(client_factory=factory, topic_id_get=lambda topic: TOPIC_ID, retry_after=0.1, **kwargs)


def _add(sink: ClickHouseSink, outputs: list[Output]) -> None:
    for out in outputs:
        sink.add(out, None, 0, None, TOPIC, out.partition, out.offset)


def _event(offset: int, partition: int = 3, **fields: Any) -> tuple[Any, ...]:
    raw = {
        "eventId": str(uuid.UUID(int=(partition << 80) + offset + 1)),
        "type": "playing",
        "userId": f"user-{offset}",
        "sessionId": f"session-{offset}",
        "videoId": f"video-{offset % 7}",
        "timestamp": NOW + offset,
        "receivedAt": NOW + 500 + offset,
        **fields,
    }
    return event_row(raw, partition=partition, offset=offset)


def _view(offset: int, partition: int = 3, **figures: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "session_id": f"session-{offset}",
        "user_id": f"user-{offset}",
        "video_id": f"video-{offset}",
        "start_ts": NOW + offset,
        "end_ts": NOW + 60_001 + offset,
        "device": "tv",
        "os": "",
        "browser": "b",
        "country": "FR",
        "cdn": "c",
        "player": "p",
        "has_view_start": True,
        "started": True,
        "startup_time_ms": 1200,
        "watch_time_ms": 55_000,
        "rebuffer_count": 2,
        "rebuffer_duration_ms": 800,
        "error_count": 1,
        "fatal_error_count": 0,
        "start_failure": False,
        "playback_failure": False,
        "exit_before_start": False,
        "max_position_ms": 54_000,
        "completion": 0.8125,
        "event_count": 11,
        "close_reason": "ended",
        "video_watched_id": uuid.uuid5(uuid.NAMESPACE_URL, f"view-{offset}"),
        "seek_count": 3,
        "seek_latency_ms": 1_234,
        "bitrate_time_ms": 50_000,
        "bitrate_kbps_ms": 50_000 * 2_500.5,
        "max_bitrate_kbps": 6_000,
        "scale_time_ms": 40_000,
        "upscale_ms": 40_000 * 0.3333,
        "downscale_ms": 0.0,
        "max_upscale": 1.25,
        "max_downscale": 0.0,
        "kafka_partition": partition,
        "kafka_offset": offset,
        **figures,
    }
    return tuple(values[name] for name in VIEW_COLUMNS)


def _stored(client: Client, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Rows as the processor made them: DateTime64 columns back to epoch milliseconds."""
    select = ", ".join(f"toUnixTimestamp64Milli({c})" if c in DATETIME64_COLUMNS else c for c in columns)
    return [tuple(row) for row in client.execute(f"SELECT {select} FROM {table} ORDER BY kafka_offset")]


def _float32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def test_datetime64_columns_are_the_models_datetime64_fields():
    fields = {
        f.column for model in (Event, ViewSummary) for f in model._meta.fields if "DateTime64" in type(f).__name__
    }
    # view_minutes has no Django model (streams 0008 is DDL): its schema is warehouse's.
    minutes = warehouse.table_named(warehouse.VIEW_MINUTES).columns
    fields |= {name for name, kind in minutes if kind.startswith("DateTime64")}
    assert fields == DATETIME64_COLUMNS


def test_every_column_type_round_trips_exactly(tables):
    events = [
        _event(0),
        _event(
            1,
            type="error",
            errorCode=TRICKY,
            errorMessage="x" * 4096,
            fatal=True,
            positionMs=event_format.INT_MAX,
            bitrateKbps=0,
            device=TRICKY,
            os="iOS",
            browser="",
            country="ZZ",
            cdn="cdn-ß",
            player="p\\",
            properties={"a": [1, 2.5, None, True], "q": TRICKY},
            timestamp=NOW + 10,  # ms ending in 0: a shorter decimal fraction
            clientTimestamp=event_format.TIMESTAMP_MAX_MS,
            receivedAt=event_format.TIMESTAMP_MIN_MS,
        ),
        _event(2, type="custom.thing", timestamp=NOW - 123, receivedAt=999, positionMs=None),
        _event(
            3, timestamp=event_format.TIMESTAMP_MAX_MS - 1, clientTimestamp=1, receivedAt=event_format.TIMESTAMP_MAX_MS
        ),
    ]
    events[3] = (*events[3][: EVENT_COLUMNS.index("late")], True, *events[3][EVENT_COLUMNS.index("late") + 1 :])
    events.append(_event(2**63 - 2, partition=65535, timestamp=NOW - 122, receivedAt=NOW - 23))
    views = [
        _view(0),
        _view(1, completion=None, start_ts=NOW - 123, end_ts=event_format.TIMESTAMP_MAX_MS, user_id=TRICKY),
        _view(2, completion=1.0 / 3.0, startup_time_ms=2**32 - 1, watch_time_ms=2**64 - 1, max_position_ms=-(2**63)),
        _view(3, has_view_start=False, started=False, exit_before_start=True, completion=0.0, close_reason="idle"),
    ]
    minutes = [
        (NOW // 60_000 * 60_000, "session-0", TRICKY, "video-0", "tv", "", "b", "FR", "c", "p", 3, 0),
        (NOW // 60_000 * 60_000 + 60_000, "session-0", "user-0", "video-0", "tv", "", "b", "FR", "c", "p", 3, 0),
        # Within the table's 30-day TTL: an expired row may go at any merge.
        (NOW - 29 * 86_400_000, "session-2", "user-2", "v", *([""] * 6), 3, 2),
        (NOW + 7, "session-3", "user-3", "v", TRICKY, *([""] * 5), 3, 3),
    ]
    outputs = [
        Output(
            partition=3,
            offset=offset,
            events=[e for e in events if e[-1] == offset],
            views=[v for v in views if v[-1] == offset],
            view_minutes=[m for m in minutes if m[-1] == offset],
        )
        for offset in range(4)
    ]
    high = Output(partition=65535, offset=2**63 - 2, events=[events[-1]])
    sink = _sink()
    _add(sink, outputs)
    _add(sink, [high])
    sink.flush()

    stored_events = _stored(tables, "events", (*EVENT_COLUMNS, "kafka_topic_id"))
    assert stored_events == [(*row, TOPIC_ID) for row in events]
    completion = VIEW_COLUMNS.index("completion")
    expected_views = [
        (
            *row[:completion],
            None if row[completion] is None else _float32(row[completion]),
            *row[completion + 1 :],
            TOPIC_ID,
        )
        for row in views
    ]
    assert _stored(tables, "view_summaries", (*VIEW_COLUMNS, "kafka_topic_id")) == expected_views
    stored_minutes = _stored(tables, "view_minutes", (*VIEW_MINUTE_COLUMNS, "kafka_topic_id"))
    assert sorted(stored_minutes) == sorted((*row, TOPIC_ID) for row in minutes)


def test_replayed_rows_are_skipped_by_source_offset(tables):
    def outputs(first: int, last: int) -> list[Output]:
        return [
            Output(partition=3, offset=o, events=[_event(o)], views=[_view(o)] if o % 3 == 0 else [])
            for o in range(first, last)
        ]

    sink = _sink(chunk_rows=4)
    _add(sink, outputs(0, 10))
    sink.flush()
    # A restart replays from an older committed offset: a fresh sink reads the stored progress.
    restarted = _sink(chunk_rows=4)
    _add(restarted, outputs(5, 15))
    restarted.flush()
    # The same sink seeing offsets jump back (a replay after backpressure) reads it again too.
    _add(restarted, outputs(12, 20))
    restarted.flush()

    offsets = [row[0] for row in tables.execute("SELECT kafka_offset FROM events ORDER BY kafka_offset")]
    assert offsets == list(range(20))
    views = [row[0] for row in tables.execute("SELECT kafka_offset FROM view_summaries ORDER BY kafka_offset")]
    assert views == [o for o in range(20) if o % 3 == 0]


def test_clickhouse_outage_raises_backpressure_and_the_retry_writes_each_row_once(tables):
    target = {"port": processes.free_port()}  # nothing listens there: the server is "down"
    settings_dict = tables.connection

    def factory() -> Client:
        return Client(
            host=settings_dict.host,
            port=target["port"],
            database=settings_dict.database,
            password=settings_dict.password,
            connect_timeout=1,
        )

    batch = [Output(partition=3, offset=o, events=[_event(o)], views=[_view(o)]) for o in range(6)]
    sink = _sink(factory, chunk_rows=3)
    _add(sink, batch)
    with pytest.raises(SinkBackpressureError):
        sink.flush()
    assert tables.execute("SELECT count() FROM events")[0][0] == 0

    target["port"] = settings_dict.port  # ClickHouse is back; Quix replays from the committed offset
    _add(sink, batch)
    sink.flush()
    assert tables.execute("SELECT count(), uniqExact(kafka_offset) FROM events")[0] == (6, 6)
    assert tables.execute("SELECT count() FROM view_summaries")[0][0] == 6


def test_without_a_dead_letter_producer_a_rejected_chunk_raises_backpressure_and_later_chunks_wait(tables):
    good = Output(partition=3, offset=0, events=[_event(0)])
    # An id that is no UUID: ClickHouse refuses the whole chunk (the processor never makes one; it
    # stands for any row ClickHouse rejects).
    bad = Output(partition=3, offset=1, events=[("not-a-uuid", *_event(1)[1:])])
    after = Output(partition=3, offset=2, events=[_event(2)])
    sink = _sink(chunk_rows=1)
    _add(sink, [good, bad, after])
    with pytest.raises(SinkBackpressureError):
        sink.flush()
    assert [r[0] for r in tables.execute("SELECT kafka_offset FROM events ORDER BY kafka_offset")] == [0]


def test_an_aged_chunk_is_written_before_the_checkpoint_when_the_writer_is_idle(tables):
    """Below ``chunk_rows``, rows still reach ClickHouse once ``chunk_seconds`` old, not all at flush."""
    sink = _sink(chunk_rows=1_000_000, chunk_seconds=0.2)
    _add(sink, [Output(partition=3, offset=o, events=[_event(o)]) for o in range(3)])
    time.sleep(0.5)
    assert tables.execute("SELECT count() FROM events")[0][0] == 0, "young chunks wait for size or age"
    _add(sink, [Output(partition=3, offset=3, events=[_event(3)])])  # the chunk is old now: handed over
    deadline = time.monotonic() + 10
    while tables.execute("SELECT count() FROM events")[0][0] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tables.execute("SELECT count() FROM events")[0][0] == 4, "written without a flush"
    _add(sink, [Output(partition=3, offset=4, events=[_event(4)])])  # a new, young chunk
    sink.flush()
    assert [r[0] for r in tables.execute("SELECT kafka_offset FROM events ORDER BY kafka_offset")] == list(range(5))


def test_a_chunk_is_handed_over_ahead_of_the_next_checkpoint(tables):
    """With the commit interval known, rows are written shortly before the checkpoint is due.

    Neither full nor old, the chunk still goes to the (idle) writer once the next checkpoint is
    closer than the last write took, so the checkpoint itself finds little left to wait for.
    """
    sink = _sink(chunk_rows=1_000_000, chunk_seconds=1_000, commit_interval=1.0)
    _add(sink, [Output(partition=3, offset=0, events=[_event(0)])])
    sink.flush()  # a checkpoint: the next one is due in a second
    _add(sink, [Output(partition=3, offset=1, events=[_event(1)])])
    time.sleep(0.3)
    assert tables.execute("SELECT count() FROM events")[0][0] == 1, "far from the checkpoint, rows wait"
    time.sleep(0.8)  # now past the due time (less the last write's duration)
    _add(sink, [Output(partition=3, offset=2, events=[_event(2)])])
    deadline = time.monotonic() + 10
    while tables.execute("SELECT count() FROM events")[0][0] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tables.execute("SELECT count() FROM events")[0][0] == 3, "handed over without a flush"
    sink.flush()
    assert [r[0] for r in tables.execute("SELECT kafka_offset FROM events ORDER BY kafka_offset")] == [0, 1, 2]


# --- Isolation of rejected rows, partitions per INSERT, failure classes -------------------------

DAY_MS = 86_400_000


class Recorder:
    """What the sink did, in order: INSERTs (table, source of each row, ok), dead letters sent, flushes.

    ``factory`` makes clients that log each INSERT; ``crash_at`` makes the n-th INSERT attempt
    (1-based) and every later one fail as a dropped connection would, standing for a worker killed
    at that point. ``send``/``flush`` make it the sink's dead-letter producer too (acknowledged at
    flush, like ``RejectedRowsProducer``).
    """

    def __init__(self, *, crash_at: int | None = None) -> None:
        self.crash_at = crash_at
        self.log: list[tuple[Any, ...]] = []
        self.acknowledged: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def attempts(self, table: str | None = None) -> int:
        return sum(1 for entry in self.log if entry[0] == "insert" and table in (None, entry[1]))

    def factory(self) -> Any:
        return _RecordingClient(client_get(), self)

    def send(self, record: dict[str, Any], *, channel: str) -> None:
        with self._lock:
            self._sent.append(record)
            self.log.append(("send", record["offset"]))

    def flush(self, *, channel: str) -> None:
        with self._lock:
            self.acknowledged += self._sent
            self._sent = []
            self.log.append(("flush",))


class _RecordingClient:
    def __init__(self, client: Client, recorder: Recorder) -> None:
        self._client = client
        self._recorder = recorder

    def execute(self, query: str, params: Any = None) -> Any:
        if not query.startswith("INSERT"):
            return self._client.execute(query, params)
        recorder = self._recorder
        table = query.split(None, 3)[2]
        columns = orjson.loads(query.split("\n", 1)[1])  # ..., kafka_partition, kafka_offset, kafka_topic_id
        offsets = list(zip(columns[-3], columns[-2], strict=True))
        with recorder._lock:
            attempt = recorder.attempts() + 1
            recorder.log.append(("insert", table, offsets, None))
            index = len(recorder.log) - 1
        if recorder.crash_at is not None and attempt >= recorder.crash_at:
            raise errors.NetworkError("simulated crash")
        try:
            result = self._client.execute(query)
        except Exception:
            recorder.log[index] = ("insert", table, offsets, False)
            raise
        recorder.log[index] = ("insert", table, offsets, True)
        return result

    def disconnect(self) -> None:
        self._client.disconnect()


def _message_events(offset: int, count: int, *, partition: int = 3, day_step: int = 0) -> list[tuple[Any, ...]]:
    """``count`` events of one message (one source offset), ``day_step`` ms apart."""
    return [
        event_row(
            {
                "eventId": str(uuid.UUID(int=(partition << 80) + (1 << 64) + (offset << 24) + i)),  # apart from _event
                "type": "playing",
                "userId": f"user-{offset}",
                "sessionId": f"session-{offset}",
                "videoId": f"video-{i % 7}",
                "timestamp": NOW + i * day_step,
                "receivedAt": NOW + 500,
            },
            partition=partition,
            offset=offset,
        )
        for i in range(count)
    ]


def _not_a_uuid(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row whose ``event_id`` the UUID column cannot take (Code 376, CANNOT_PARSE_UUID)."""
    return ("not-a-uuid", *row[1:])


def _negative_watch_time(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A view whose ``watch_time_ms`` is negative: UInt64 refuses it (Code 72, CANNOT_PARSE_NUMBER)."""
    index = VIEW_COLUMNS.index("watch_time_ms")
    return (*row[:index], -1, *row[index + 1 :])


def _event_ids(client: Client) -> list[str]:
    return [r[0] for r in client.execute("SELECT toString(event_id) FROM events ORDER BY kafka_offset, event_id")]


def _assert_offset_order(recorder: Recorder) -> None:
    """Per table and partition, successful INSERTs carry non-decreasing offsets; and no INSERT
    follows a dead letter sent before that dead letter is acknowledged (flushed)."""
    last: dict[tuple[str, int], int] = {}
    unflushed = False
    for entry in recorder.log:
        if entry[0] == "send":
            unflushed = True
        elif entry[0] == "flush":
            unflushed = False
        else:
            assert not unflushed, f"INSERT before the dead letter was acknowledged: {recorder.log}"
            _, table, sources, ok = entry
            if ok:
                for partition, offset in sources:
                    assert offset >= last.get((table, partition), -1), f"{table}: offsets went back: {entry}"
                    last[table, partition] = offset


def test_a_chunk_spanning_150_days_is_written_fully(tables):
    """The incident of issue 14: one message of 150 events on 150 days, then normal traffic."""
    recorder = Recorder()
    spread = Output(partition=3, offset=0, events=_message_events(0, 150, day_step=DAY_MS))
    views = [_view(o, start_ts=NOW + o * DAY_MS) for o in range(1, 151)]  # metrics_view_minute is daily too
    normal = [Output(partition=3, offset=o, events=[_event(o)], views=[views[o - 1]]) for o in range(1, 151)]
    other = Output(partition=5, offset=0, events=_message_events(0, 120, partition=5, day_step=DAY_MS))
    sink = _sink(recorder.factory, rejected_rows=recorder)
    _add(sink, [spread, *normal, other])
    sink.flush()

    stored = tables.execute("SELECT count(), uniqExact(event_id), uniqExact(toDate(ts)) FROM events")[0]
    assert stored == (420, 420, 150)
    assert tables.execute("SELECT sum(events) FROM metrics_event_type_minute")[0][0] == 420
    assert tables.execute("SELECT sum(events) FROM event_video_hour")[0][0] == 420
    assert tables.execute("SELECT count() FROM view_summaries")[0][0] == 150
    assert tables.execute("SELECT sum(views) FROM metrics_view_minute")[0][0] == 150
    assert tables.execute("SELECT sum(views) FROM view_rollup_hour")[0][0] == 150
    assert not recorder.acknowledged, "nothing is dead-lettered for spanning days"
    # Days 0-149 then 0-119 again: cut at 95 days (the default), in order, with nothing refused.
    assert all(ok for entry in recorder.log if entry[0] == "insert" for ok in [entry[3]])
    assert recorder.attempts("events") == 3
    assert recorder.attempts("view_summaries") == 2
    _assert_offset_order(recorder)


def test_a_message_cut_across_inserts_is_completed_after_a_crash(tables):
    """A crash between the blocks of one 150-day message: the replay writes the rest, once."""
    outputs = [
        Output(partition=3, offset=0, events=[_event(0)]),
        Output(partition=3, offset=1, events=_message_events(1, 150, day_step=DAY_MS)),
        Output(partition=3, offset=2, events=[_event(2)]),
    ]
    crashed = Recorder(crash_at=2)  # the first block (95 days) lands, the second does not
    sink = _sink(crashed.factory, rejected_rows=crashed)
    _add(sink, outputs)
    with pytest.raises(SinkBackpressureError):
        sink.flush()
    assert tables.execute("SELECT count() FROM events")[0][0] == 1 + 95, "offset 0, and offset 1 in part"

    replay = Recorder()
    restarted = _sink(replay.factory, rejected_rows=replay)
    _add(restarted, outputs)
    restarted.flush()
    assert tables.execute("SELECT count(), uniqExact(event_id) FROM events")[0] == (152, 152)
    assert tables.execute("SELECT sum(events) FROM metrics_event_type_minute")[0][0] == 152


@pytest.mark.kafka
def test_a_rejected_row_is_dead_lettered_alone_and_the_rest_is_written(tables, stream_env: StreamEnv):
    """One refused row per table: its dead letter reaches the broker; every other row is stored."""
    dlq = stream_env.topic(event_format.EVENTS_DLQ_TOPIC)
    counted: list[dict[str, Any]] = []
    rejected = RejectedRowsProducer(Producer(kafka.client_config(**{"acks": "all"})), dlq, on_sent=counted.append)
    events = {o: _message_events(o, 3) for o in range(8)}
    events[5][1] = _not_a_uuid(events[5][1])
    views = {o: [_view(o)] for o in range(8)}
    views[2] = [_negative_watch_time(views[2][0])]
    outputs = [Output(partition=3, offset=o, events=events[o], views=views[o]) for o in range(8)]
    sink = _sink(rejected_rows=rejected, chunk_rows=1000)
    _add(sink, outputs)
    sink.flush()

    good = sorted(str(row[0]) for o in range(8) for row in events[o] if row[0] != "not-a-uuid")
    assert sorted(_event_ids(tables)) == good
    assert [r[0] for r in tables.execute("SELECT kafka_offset FROM view_summaries ORDER BY kafka_offset")] == [
        0,
        1,
        3,
        4,
        5,
        6,
        7,
    ]
    assert tables.execute("SELECT sum(events) FROM event_video_hour")[0][0] == 23

    letters = stream_env.consume(event_format.EVENTS_DLQ_TOPIC)
    assert sorted((d["offset"], d["table"]) for d in letters) == [
        (2, "view_summaries"),
        (5, "events"),
    ]
    by_table = {d["table"]: d for d in letters}
    event_letter = by_table["events"]
    assert event_letter["reason"] == dead_letters.CLICKHOUSE_REJECTED
    assert event_letter["stage"] == "sink"
    assert (event_letter["topic"], event_letter["partition"], event_letter["offset"]) == (TOPIC, 3, 5)
    assert event_letter["userId"] == "user-5" and event_letter["key"] == "user-5"
    assert "CANNOT_PARSE_UUID" in event_letter["detail"]
    assert "insert_spool" not in event_letter["detail"], "no trace of one attempt: a replay finds the same record"
    row = event_letter["row"]
    assert row["event_id"] == "not-a-uuid" and row["kafka_offset"] == 5
    assert set(row) == set(EVENT_COLUMNS)
    # The payload is the event the row was made from: what ``dead_letters replay`` re-sends.
    event = orjson.loads(event_letter["payload"])
    assert event["eventId"] == "not-a-uuid" and event["userId"] == "user-5"
    assert event["timestamp"] == row["ts"] and event["sessionId"] == "session-5"
    assert "CANNOT_PARSE_NUMBER" in by_table["view_summaries"]["detail"]
    assert by_table["view_summaries"]["row"]["watch_time_ms"] == -1
    assert orjson.loads(by_table["view_summaries"]["payload"])["watch_time_ms"] == -1  # a view: no event to rebuild
    assert len(counted) == 2, "counted once acknowledged"


def test_a_replay_after_a_crash_during_isolation_writes_nothing_twice_and_loses_nothing(tables):
    """Crash at every INSERT of the isolation in turn, then replay the same outputs with a fresh sink."""
    events = {o: _message_events(o, 1) for o in range(10)}
    events[5] = _message_events(5, 3)  # one message of three events, the middle one refused
    events[5][1] = _not_a_uuid(events[5][1])
    outputs = [Output(partition=3, offset=o, events=events[o]) for o in range(10)]
    good = sorted(str(row[0]) for o in range(10) for row in events[o] if row[0] != "not-a-uuid")

    clean = Recorder()
    sink = _sink(clean.factory, rejected_rows=clean)
    _add(sink, outputs)
    sink.flush()
    assert sorted(_event_ids(tables)) == good
    _assert_offset_order(clean)
    attempts = clean.attempts()
    assert [letter["offset"] for letter in clean.acknowledged] == [5]

    for crash_at in range(1, attempts + 1):
        tables.execute("TRUNCATE TABLE events")
        crashed = Recorder(crash_at=crash_at)
        sink = _sink(crashed.factory, rejected_rows=crashed)
        _add(sink, outputs)
        with pytest.raises(SinkBackpressureError):
            sink.flush()
        _assert_offset_order(crashed)
        replay = Recorder()
        restarted = _sink(replay.factory, rejected_rows=replay)
        _add(restarted, outputs)
        restarted.flush()
        _assert_offset_order(replay)
        assert sorted(_event_ids(tables)) == good, f"crash at INSERT {crash_at}"
        # The refused row is dead-lettered by the run that found it, or again by the replay when
        # the crash came first: never lost (a replayed dead letter is the same record).
        letters = crashed.acknowledged + replay.acknowledged
        assert {letter["offset"] for letter in letters} == {5}, f"crash at INSERT {crash_at}"
        assert all(letter == clean.acknowledged[0] for letter in letters), "the same record each time"


def test_isolating_one_bad_row_costs_a_logarithmic_number_of_inserts(tables):
    n = 1024
    outputs = [Output(partition=3, offset=o, events=[_event(o)]) for o in range(n)]
    bad = 700
    outputs[bad] = Output(partition=3, offset=bad, events=[_not_a_uuid(_event(bad))])
    recorder = Recorder()
    sink = _sink(recorder.factory, rejected_rows=recorder, chunk_rows=10 * n)
    _add(sink, outputs)
    started = time.monotonic()
    sink.flush()
    seconds = time.monotonic() - started
    assert tables.execute("SELECT count() FROM events")[0][0] == n - 1
    assert [letter["offset"] for letter in recorder.acknowledged] == [bad]
    # One failing INSERT of the whole, then per level one good half written and one bad half split.
    assert recorder.attempts("events") == 2 * int(math.log2(n)) + 1, recorder.attempts("events")
    print(f"isolating 1 of {n} rows: {recorder.attempts('events')} INSERTs, {seconds:.2f} s")


def _gauge() -> float:
    value = REGISTRY.get_sample_value("streams_clickhouse_failing_seconds")
    assert value is not None
    return value


def _failures(failure_class: str) -> float:
    return REGISTRY.get_sample_value("streams_clickhouse_failures_total", {"class": failure_class}) or 0.0


def test_a_server_that_is_down_is_retried_and_the_failing_gauge_grows(tables):
    target = {"port": processes.free_port()}  # nothing listens there: the server is "down"
    settings_dict = tables.connection

    def factory() -> Client:
        return Client(
            host=settings_dict.host,
            port=target["port"],
            database=settings_dict.database,
            password=settings_dict.password,
            connect_timeout=1,
        )

    recorder = Recorder()
    batch = [Output(partition=3, offset=o, events=[_event(o)]) for o in range(4)]
    sink = _sink(factory, rejected_rows=recorder)
    retried_before = _failures("retryable")
    assert _gauge() == 0.0
    for attempt in range(3):  # Quix retries the checkpoint after each backpressure
        _add(sink, batch)
        with pytest.raises(SinkBackpressureError):
            sink.flush()
        if attempt == 0:
            first = _gauge()
        time.sleep(0.2)
    assert _gauge() >= first + 0.4, "the gauge grows while the sink keeps failing"
    assert _failures("retryable") == retried_before + 3
    assert not recorder.acknowledged, "a server that is down is no reason to dead-letter anything"

    target["port"] = settings_dict.port
    _add(sink, batch)
    sink.flush()
    assert _gauge() == 0.0
    assert tables.execute("SELECT count(), uniqExact(kafka_offset) FROM events")[0] == (4, 4)
