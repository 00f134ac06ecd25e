"""ClickHouseSink against the session's embedded ClickHouse server: exact values, offset skip, outages."""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clickhouse_driver import Client
from quixstreams.sinks.base import SinkBackpressureError

from analytics_platform import event_format
from analytics_platform.clickhouse import client_get
from analytics_platform.devstack import processes
from streams.models import Event, ViewSummary
from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, Output, event_row
from streams.sinks import DATETIME64_COLUMNS, ClickHouseSink

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

TOPIC = "sink-test-topic"
TOPIC_ID = "sink-test-topic-id"
# Recent: the tables' TTLs drop rows older than 90 days (events) / 400 days (views) at insert.
NOW = int(time.time()) * 1000 + 123
TRICKY = 'quote " backslash \\ newline \n tab \t nul \x00 ctrl \x1f é 中文 😀 \u2028 ; SELECT 1 -- x'


@pytest.fixture
def tables(clickhouse_server: Any) -> Iterator[Client]:
    client = client_get()
    for table in ("events", "view_summaries"):
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
    outputs = [
        Output(
            partition=3,
            offset=offset,
            events=[e for e in events if e[-1] == offset],
            views=[v for v in views if v[-1] == offset],
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
        return Client(host=settings_dict.host, port=target["port"], database=settings_dict.database, connect_timeout=1)

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


def test_a_rejected_chunk_raises_backpressure_and_later_chunks_are_not_written(tables):
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
