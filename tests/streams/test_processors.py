"""The pure processor on plain data: no broker, no ClickHouse."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path

import orjson
import pytest

from analytics_platform import event_format
from streams import dead_letters, processors
from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS, VIEW_MINUTE_COLUMNS, PartitionProcessor, partition, views
from tests.support.simulate import Message, batches_coalesce, stream_generate
from tests.support.stores import DictStore, outputs_merge

from .conftest import VIEW_FIGURES

T0 = 1_780_000_000_000


def run(messages, *, processor=None, store=None, first_offset=0):
    processor = processor or PartitionProcessor()
    store = store if store is not None else DictStore()
    outputs = [
        processor.process(m.value(), key=m.key(), partition=0, offset=first_offset + i, store=store)
        for i, m in enumerate(messages)
    ]
    processor.checkpoint()  # what the worker does before each commit: cached state into the store
    return outputs_merge(outputs), outputs


def ev(etype, ts, session="s1", user="u1", **extra):
    return {
        "eventId": str(uuid.uuid4()),
        "type": etype,
        "userId": user,
        "sessionId": session,
        "videoId": "v1",
        "timestamp": ts,
        "receivedAt": ts,
        **extra,
    }


def msg(events, received_at=None, user="u1"):
    return Message(user_id=user, received_at=received_at or max(e["timestamp"] for e in events), events=events)


def tick(ts):
    return msg([ev("stream.tick", ts, session=None, user="tick")], user="tick")


def views_by_session(out):
    """Summaries by session, without the source offset (which depends on where the view closed)."""
    index = {name: i for i, name in enumerate(VIEW_COLUMNS) if name != "kafka_offset"}
    return {row[0]: {name: row[i] for name, i in index.items()} for row in out.views}


def test_generated_stream_gives_exactly_the_truth():
    stream = stream_generate(views=400, users=60, seed=7, partitions=1, start_ms=T0)
    out, _ = run(stream.messages)
    truth = stream.truth
    ids = [str(row[0]) for row in out.events]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) == truth.event_ids
    late = EVENT_COLUMNS.index("late")
    assert {str(row[0]) for row in out.events if row[late]} == truth.late_ids
    assert out.duplicates == truth.duplicates_sent
    assert len(out.dead_letters) == truth.poison_messages + truth.poison_events
    assert all(d["reason"] for d in out.dead_letters)

    got = views_by_session(out)
    assert set(got) == set(truth.views)
    for session, expected in truth.views.items():
        row = got[session]
        assert {k: row[k] for k in VIEW_FIGURES} == {k: expected[k] for k in VIEW_FIGURES}, session
    # Concurrent viewers: each view's watching minutes, each exactly once, emitted as they settle
    # or when the view closes.
    minute, session_at = VIEW_MINUTE_COLUMNS.index("minute_ts"), VIEW_MINUTE_COLUMNS.index("session_id")
    emitted = [(row[session_at], row[minute]) for row in out.view_minutes]
    assert len(emitted) == len(set(emitted)), "a view's minute was emitted twice"
    assert sorted(emitted) == sorted((s, m) for s, v in truth.views.items() for m in v["minutes"])
    assert sorted(w["id"] for w in out.video_watched) == sorted(
        str(processors.video_watched_id(s)) for s in truth.views
    )
    assert sorted(e["eventId"] for e in out.video_errors) == sorted(truth.fatal_error_ids)
    assert {e["id"] for e in out.video_errors} == {
        str(processors.video_error_id(uuid.UUID(i))) for i in truth.fatal_error_ids
    }


def test_replay_from_a_restored_state_reproduces_the_same_output():
    """What a crash does: state restored as of the last commit, messages after it replayed."""
    stream = stream_generate(views=150, users=20, seed=3, partitions=1, start_ms=T0)
    processor, store = PartitionProcessor(), DictStore()
    cut = len(stream.messages) // 3
    run(stream.messages[:cut], processor=processor, store=store)
    snapshot = copy.deepcopy(store.data)
    _, first = run(stream.messages[cut:], processor=processor, store=store, first_offset=cut)
    restored = DictStore()
    restored.data = snapshot
    _, second = run(stream.messages[cut:], processor=PartitionProcessor(), store=restored, first_offset=cut)
    assert [(o.events, o.views, o.video_watched, o.video_errors) for o in first] == [
        (o.events, o.views, o.video_watched, o.video_errors) for o in second
    ]


def test_watch_time_counts_playing_and_rebuffering_only():
    events = [
        ev("view_start", T0),
        ev("playing", T0 + 1_000),  # startup 1 s
        ev("pause", T0 + 11_000),  # 10 s played
        ev("playing", T0 + 16_000),  # 5 s paused: not watched
        ev("rebuffer_start", T0 + 21_000),  # 5 s played
        ev("rebuffer_end", T0 + 23_000),  # 2 s rebuffering: watched
        ev("seek", T0 + 25_000),  # 2 s played
        ev("playing", T0 + 26_000),  # 1 s seeking: not watched
        ev("ended", T0 + 30_000),  # 4 s played
    ]
    out, _ = run([msg(events), tick(T0 + 200_000)])
    (view,) = views_by_session(out).values()
    assert view["startup_time_ms"] == 1_000
    assert view["watch_time_ms"] == 10_000 + 5_000 + 2_000 + 2_000 + 4_000
    assert view["rebuffer_duration_ms"] == 2_000
    assert view["rebuffer_count"] == 1
    assert view["close_reason"] == "ended"
    assert view["completion"] == 1.0


def test_out_of_order_events_within_the_grace_period_are_sorted_by_event_time():
    events = [
        ev("view_start", T0),
        ev("playing", T0 + 500),
        ev("rebuffer_start", T0 + 10_000),
        ev("rebuffer_end", T0 + 13_000),
        ev("ended", T0 + 20_000),
    ]
    in_order, _ = run([msg(events), tick(T0 + 100_000)])
    # ended first, the rest 3 s later (received before the 5 s grace after the end has passed)
    shuffled = [msg([events[4]]), msg(list(reversed(events[:4])), received_at=T0 + 23_000)]
    out_of_order, _ = run([*shuffled, tick(T0 + 100_000)])
    assert views_by_session(in_order) == views_by_session(out_of_order)
    assert views_by_session(out_of_order)["s1"]["watch_time_ms"] == 19_500
    assert not out_of_order.late


def test_an_event_after_its_view_closed_is_stored_as_late_and_not_applied():
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("ended", T0 + 10_000)]
    late_event = ev("heartbeat", T0 + 5_000)
    out, outputs = run([msg(events), tick(T0 + 20_000), msg([late_event], received_at=T0 + 30_000)])
    assert len(out.views) == 1
    assert outputs[1].views, "the view closes when the watermark passes end + grace"
    assert out.late == 1
    late = EVENT_COLUMNS.index("late")
    assert [str(r[0]) for r in out.events if r[late]] == [late_event["eventId"]]


def test_idle_view_closes_sixty_seconds_after_its_last_event():
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("heartbeat", T0 + 10_000)]
    _, outputs = run([msg(events), tick(T0 + 69_999), tick(T0 + 70_000)])
    assert not outputs[1].views
    (view,) = outputs[2].views
    assert view[VIEW_COLUMNS.index("close_reason")] == "idle"
    assert outputs[2].video_watched[0]["sessionId"] == "s1"


def test_duplicate_event_id_in_a_later_message_counts_once():
    first = ev("view_start", T0)
    out, _ = run([msg([first]), msg([dict(first, receivedAt=T0 + 9_000)], received_at=T0 + 9_000)])
    assert len(out.events) == 1
    assert out.duplicates == 1


def test_fatal_error_publishes_video_error_with_view_context():
    events = [ev("view_start", T0), ev("playing", T0 + 800), ev("error", T0 + 5_000, errorCode="E1", fatal=True)]
    out, _ = run([msg(events)])
    (error,) = out.video_errors
    assert error["timeSinceViewStartMs"] == 5_000
    assert error["errorCode"] == "E1"
    assert error["id"] == str(processors.video_error_id(uuid.UUID(events[2]["eventId"])))


def test_poison_messages_go_to_the_dead_letter_output_with_a_reason():
    bad_json = Message(user_id="u1", received_at=T0, events=[], raw=b"\xff not json")
    unknown_version = Message(user_id="u1", received_at=T0, events=[], raw=orjson.dumps({"v": 99}))
    batch_without_events = Message(user_id="u1", received_at=T0, events=[], raw=orjson.dumps({"v": 2}))
    bad_event = msg([ev("view_start", T0), {**ev("playing", T0 + 1), "timestamp": "yesterday"}], received_at=T0)
    out, _ = run([bad_json, unknown_version, batch_without_events, bad_event])
    reasons = [(d["reason"], d["field"]) for d in out.dead_letters]
    assert reasons == [
        ("invalid_json", None),
        ("unknown_version", "v"),
        ("invalid_message", "events"),
        ("invalid_event", "timestamp"),
    ]
    assert out.dead_letters[1]["detail"] == "unknown message version 99"
    assert len(out.events) == 1  # the valid event of the mixed message is kept
    # The original bytes: the whole message when it is unusable, else the bad event alone.
    assert dead_letters.payload_bytes(out.dead_letters[0]) == b"\xff not json"
    assert orjson.loads(dead_letters.payload_bytes(out.dead_letters[3]))["timestamp"] == "yesterday"
    assert out.dead_letters[3]["eventId"] == bad_event.events[1]["eventId"]
    assert all(d["type"] == "DeadLetter" and d["partition"] == 0 for d in out.dead_letters)


def _with_raw_properties(event, properties: bytes) -> bytes:
    """An event's JSON with ``properties`` spliced in as bytes (no encoder takes what is tested)."""
    return orjson.dumps(event)[:-1] + b',"properties":' + properties + b"}"


def _message_bytes(version, user, events: list[bytes]) -> bytes:
    head = (
        b'{"v":2,"events":['
        if version == 2
        else b'{"v":1,"userId":"%s","receivedAt":%d,"events":['
        % (
            user.encode(),
            T0,
        )
    )
    return head + b",".join(events) + b"]}"


@pytest.mark.parametrize("depth", [300, 1_000, 10_000])
@pytest.mark.parametrize("version", [1, 2])
def test_one_unprocessable_event_is_dead_lettered_alone_with_its_bytes(depth, version):
    """Nesting beyond what orjson can encode (~255) or msgspec can decode (~1,000) fails one event only.

    An earlier worker dead-lettered the whole message (other clients' accepted events with it)
    when orjson.dumps of one event's properties failed.
    """
    good = [ev("view_start", T0, user="u9", session="s9"), ev("playing", T0 + 5, user="u9", session="s9")]
    deep, huge_int = ev("heartbeat", T0 + 2, user="u9", session="s9"), ev("heartbeat", T0 + 3, user="u9", session="s9")
    deep_bytes = _with_raw_properties(deep, b'{"k":' * depth + b'"leaf"' + b"}" * depth)
    parts = [
        orjson.dumps(good[0]),
        deep_bytes,
        _with_raw_properties(huge_int, b'{"n":%d}' % 2**70),
        orjson.dumps(good[1]),
    ]
    out = PartitionProcessor().process(
        _message_bytes(version, "u9", parts), key=b"u9", partition=0, offset=0, store=DictStore()
    )
    assert [row[0] for row in out.events] == [uuid.UUID(e["eventId"]) for e in good]
    assert [(d["reason"], d["eventId"]) for d in out.dead_letters] == [
        ("invalid_event", deep["eventId"] if depth < 1024 else None),  # orjson reads ids up to 1,024 levels
        ("invalid_event", huge_int["eventId"]),
    ]
    assert dead_letters.payload_bytes(out.dead_letters[0]) == deep_bytes, "the event's original bytes"


def test_a_message_nested_too_deep_for_any_parser_is_split_without_recursion():
    """The envelope scanner: a v2 message with a 100,000-level event keeps its other events."""
    good = ev("view_start", T0, user="u3", session="s3")
    deep_event = b'{"eventId":"x","properties":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    value = b'{"v":2,"events":[' + orjson.dumps(good) + b"," + deep_event + b"]}"
    out = PartitionProcessor().process(value, key=None, partition=0, offset=0, store=DictStore())
    assert [row[0] for row in out.events] == [uuid.UUID(good["eventId"])]
    assert len(out.dead_letters) == 1 and dead_letters.payload_bytes(out.dead_letters[0]) == deep_event


def _comparable(out):
    """Rows and derived events without the source offsets (batching changes which message holds what)."""
    offset = EVENT_COLUMNS.index("kafka_offset")
    events = sorted(row[:offset] for row in out.events)
    views = views_by_session(out)
    watched = sorted((e["id"], orjson.dumps(e, option=orjson.OPT_SORT_KEYS)) for e in out.video_watched)
    errors = sorted(e["id"] for e in out.video_errors)
    return events, views, watched, errors, out.duplicates, out.late


@pytest.mark.parametrize("max_events", [1, 7, 64])
def test_v2_batches_give_the_same_rows_views_and_derived_events_as_per_user_messages(max_events):
    """The ingest coalescer's v2 batches (many users per message) change no figure of the truth."""
    stream = stream_generate(views=300, users=40, seed=13, partitions=1, start_ms=T0, poison=False)
    expected, _ = run(stream.messages)
    batches = batches_coalesce(stream.messages, partitions=1, max_events=max_events)
    assert all(m.version == 2 for m in batches if m.partition is None or m.user_id == "")
    if max_events > 1:
        assert len(batches) < len(stream.messages) / 2, "events of several users share a message"
    got, _ = run(batches)
    assert _comparable(got) == _comparable(expected)
    assert len(got.views) == len(stream.truth.views)
    assert {str(row[0]) for row in got.events} == stream.truth.event_ids


def test_a_v2_event_without_a_usable_user_is_dead_lettered_alone():
    good = ev("view_start", T0, user="u7", session="s7")
    nameless = {**ev("heartbeat", T0 + 1), "userId": 42}
    batch = Message(user_id="", received_at=T0, events=[good, nameless], partition=0, version=2)
    processor, store = PartitionProcessor(), DictStore()
    out, _ = run([batch], processor=processor, store=store)
    assert [row[0] for row in out.events] == [uuid.UUID(good["eventId"])]
    assert [(d["reason"], d["field"]) for d in out.dead_letters] == [("invalid_event", "userId")]
    assert not [key for key in store.data if key[0] == b""], "no state for the nameless event"


@pytest.mark.parametrize("version", [1, 2])
def test_event_types_are_checked_on_the_fast_path_too(version):
    """A custom type must match the pattern; the fast path (msgspec) leaves that check to Python."""
    good = ev("player.quality_change", T0, user="u8", session="s8")
    bad = {**ev("heartbeat", T0 + 1, user="u8", session="s8"), "type": "Not A Type!"}
    batch = Message(user_id="u8", received_at=T0, events=[good, bad], partition=0, version=version)
    out, _ = run([batch])
    assert [row[0] for row in out.events] == [uuid.UUID(good["eventId"])]
    assert len(out.dead_letters) == 1
    assert out.dead_letters[0]["detail"].startswith("type: 'Not A Type!' is neither a playback type")


def test_state_cache_checkpoints_change_nothing_but_when_the_store_is_written():
    """Checkpointing after every message or only at the end: same outputs, same stored state."""
    stream = stream_generate(views=150, users=20, seed=17, partitions=1, start_ms=T0, poison=False)
    every, every_store, every_outputs = PartitionProcessor(), DictStore(), []
    once, once_store, once_outputs = PartitionProcessor(), DictStore(), []
    for i, m in enumerate(stream.messages):
        every_outputs.append(every.process(m.value(), key=m.key(), partition=0, offset=i, store=every_store))
        every.checkpoint()
        once_outputs.append(once.process(m.value(), key=m.key(), partition=0, offset=i, store=once_store))
    assert not once_store.data, "write-back: nothing reaches the store before the checkpoint"
    assert once.checkpoint() > 0
    users = {f"user-17-{u}".encode() for u in range(20)}
    assert users <= {prefix for prefix, _ in once_store.data}
    assert every_store.data == once_store.data
    assert _comparable(outputs_merge(every_outputs)) == _comparable(outputs_merge(once_outputs))


def test_a_rewind_drops_the_cached_changes_of_the_dropped_checkpoint():
    """Sink backpressure: Quix drops the checkpoint's state and seeks back to the committed offset."""
    stream = stream_generate(views=150, users=20, seed=19, partitions=1, start_ms=T0, poison=False)
    cut = len(stream.messages) // 2
    processor, store = PartitionProcessor(), DictStore()
    run(stream.messages[:cut], processor=processor, store=store)  # committed
    for i, m in enumerate(stream.messages[cut:], start=cut):  # processed, never committed
        processor.process(m.value(), key=m.key(), partition=0, offset=i, store=store)
    assert processor._timers[0].cache.dirty
    _, replayed = run(stream.messages[cut:], processor=processor, store=store, first_offset=cut)
    fresh_store = DictStore()
    run(stream.messages[:cut], store=fresh_store)
    _, fresh = run(stream.messages[cut:], store=fresh_store, first_offset=cut)
    assert [_comparable(o) for o in replayed] == [_comparable(o) for o in fresh]
    assert store.data == fresh_store.data


def test_derived_events_match_their_avro_schemas():
    """The JSON on the topics follows streams/schemas/*.avsc (what an Avro serializer would need)."""
    import fastavro
    import fastavro.validation

    schemas = Path(processors.__file__).parent.parent / "schemas"
    watched = fastavro.parse_schema(orjson.loads((schemas / "video_watched.avsc").read_bytes()))
    error = fastavro.parse_schema(orjson.loads((schemas / "video_error.avsc").read_bytes()))
    stream = stream_generate(views=120, users=20, seed=5, partitions=1, start_ms=T0)
    out, _ = run(stream.messages)
    assert out.video_watched and out.video_errors
    for event in out.video_watched:
        assert fastavro.validation.validate(event, watched, raise_errors=True)
    for event in out.video_errors:
        assert fastavro.validation.validate(event, error, raise_errors=True)


def test_state_of_a_user_who_never_comes_back_is_deleted_after_the_dedup_window():
    store = DictStore()
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("ended", T0 + 10_000)]
    run([msg(events), tick(T0 + 60_000)], store=store)
    assert any(prefix == b"u1" for prefix, _ in store.data), "the user's dedup ids are remembered"
    day = 24 * 3600 * 1000
    run([tick(T0 + day + 120_000)], processor=None, store=store, first_offset=2)
    assert not [key for key in store.data if key[0] == b"u1"]
    timers = [orjson.loads(v) for (prefix, key), v in store.data.items() if prefix == partition.PARTITION_PREFIX]
    assert not any("u1" in t for t in timers if isinstance(t, dict))


def _user_keys(store, user=b"u1"):
    return sorted(key for prefix, key in store.data if prefix == user)


def test_the_newest_dedup_bucket_is_stored_in_the_user_state_and_older_ones_apart():
    """An active user costs one state write per checkpoint: its newest id bucket is inside ``u``."""
    size = partition.DEDUP_BUCKET_MS
    start = (T0 // size + 1) * size  # the first millisecond of a bucket
    first, second = ev("view_start", start + 1_000), ev("playing", start + 2_000)
    store, processor = DictStore(), PartitionProcessor()
    run([msg([first, second])], processor=processor, store=store)
    assert _user_keys(store) == ["u"]
    later = ev("heartbeat", start + size + 1_000)  # the next bucket moves the first one out
    run([msg([later])], processor=processor, store=store, first_offset=1)
    assert _user_keys(store) == [f"d{start // size}", "u"]
    retries = [dict(first, receivedAt=start + size + 5_000), dict(later, receivedAt=start + size + 5_000)]
    # Retries of both buckets are duplicates, here and in a process that reads the state back.
    for reader, offset in ((processor, 2), (PartitionProcessor(), 3)):
        out, _ = run([msg(retries)], processor=reader, store=store, first_offset=offset)
        assert (len(out.events), out.duplicates) == (0, 2)


def test_dedup_ids_stored_before_the_inline_bucket_are_still_read():
    """State written by the previous version (every bucket under a ``d`` key) keeps deduplicating."""
    first = ev("view_start", T0)
    store = DictStore()
    run([msg([first])], store=store)
    state = orjson.loads(store.data[(b"u1", "u")])
    bucket, ids = state.pop("i")
    store.data[(b"u1", "u")] = orjson.dumps(state)
    store.data[(b"u1", f"d{bucket}")] = orjson.dumps(ids)
    out, _ = run([msg([dict(first, receivedAt=T0 + 5_000)])], store=store, first_offset=1)
    assert (len(out.events), out.duplicates) == (0, 1)


class WallTick:
    """A worker's tick message (wall-clock time), as ``streams.app.IdleTicker`` produces it."""

    def __init__(self, wall_clock_ms):
        self.wall_clock_ms = wall_clock_ms

    def value(self):
        return processors.tick_message(self.wall_clock_ms)

    def key(self):
        return b"\x00tick"


GRACE = processors.ProcessorConfig().grace_ms
IDLE = processors.ProcessorConfig().idle_timeout_ms


def test_ended_view_with_no_later_traffic_is_closed_by_a_wall_clock_tick_and_not_before():
    """A tick at T moves the watermark to T - grace: the view closes once T - grace >= end + grace."""
    end = T0 + 20_000
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("ended", end)]
    due = end + GRACE + GRACE
    out, outputs = run([msg(events), WallTick(end + GRACE), WallTick(due - 1), WallTick(due)])
    assert not outputs[0].views and not outputs[1].views and not outputs[2].views
    (view,) = outputs[3].views
    assert view[VIEW_COLUMNS.index("close_reason")] == "ended"
    assert view[VIEW_COLUMNS.index("watch_time_ms")] == 19_500
    assert view[VIEW_COLUMNS.index("kafka_offset")] == 3  # stamped with the tick's offset: the sink stays exact
    assert [w["sessionId"] for w in outputs[3].video_watched] == ["s1"]
    # Ticks are no events: no raw row, no dead letter, nothing counted.
    assert len(out.events) == 3
    assert not out.dead_letters and not out.duplicates and not out.late


def test_silent_view_is_closed_by_a_tick_after_sixty_seconds_of_wall_clock():
    last = T0 + 10_000
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("heartbeat", last)]
    due = last + IDLE + GRACE
    _, outputs = run([msg(events), WallTick(due - 1), WallTick(due)])
    assert not outputs[1].views
    (view,) = outputs[2].views
    assert view[VIEW_COLUMNS.index("close_reason")] == "idle"
    assert not outputs[2].events


def test_a_tick_behind_the_watermark_changes_nothing():
    events = [ev("view_start", T0), ev("playing", T0 + 500), ev("ended", T0 + 20_000)]
    processor, store = PartitionProcessor(), DictStore()
    run(
        [msg(events), msg([ev("heartbeat", T0 + 60_000, session="s2", user="u2")], user="u2")],
        processor=processor,
        store=store,
    )
    before = copy.deepcopy(store.data)
    out, _ = run([WallTick(T0 + 30_000)], processor=processor, store=store, first_offset=2)
    assert (out.events, out.views, out.video_watched, out.dead_letters) == ([], [], [], [])
    assert store.data == before


def test_ticks_replay_exactly_and_do_not_disturb_the_truth():
    """Ticks interleaved with a stream: a replay from restored state gives the same output, and the
    generated truth still holds when the ticks follow the stream's own time."""
    stream = stream_generate(views=150, users=20, seed=5, partitions=1, start_ms=T0)
    messages: list[Message | WallTick] = []
    previous = None
    for m in stream.messages:
        if previous is not None and m.received_at > previous.received_at + 2_000:
            messages.append(WallTick(m.received_at - 1_000))  # a quiet second: the clock is behind the next event
        messages.append(m)
        previous = m
    processor, store = PartitionProcessor(), DictStore()
    cut = len(messages) // 2
    run(messages[:cut], processor=processor, store=store)
    snapshot = copy.deepcopy(store.data)
    _, first = run(messages[cut:], processor=processor, store=store, first_offset=cut)
    restored = DictStore()
    restored.data = snapshot
    _, second = run(messages[cut:], processor=PartitionProcessor(), store=restored, first_offset=cut)
    assert [(o.events, o.views, o.video_watched, o.video_errors) for o in first] == [
        (o.events, o.views, o.video_watched, o.video_errors) for o in second
    ]
    ticks = sum(isinstance(m, WallTick) for m in messages)
    assert ticks > 50
    out, _ = run(messages)
    late = EVENT_COLUMNS.index("late")
    assert {str(r[0]) for r in out.events} == stream.truth.event_ids
    assert {str(r[0]) for r in out.events if r[late]} == stream.truth.late_ids
    assert len(out.dead_letters) == stream.truth.poison_messages + stream.truth.poison_events
    got = views_by_session(out)
    assert set(got) == set(stream.truth.views)
    for session, expected in stream.truth.views.items():
        assert {k: got[session][k] for k in VIEW_FIGURES} == {k: expected[k] for k in VIEW_FIGURES}, session


def test_tick_is_recognised_only_in_its_own_shape():
    assert processors.tick_decode(processors.tick_message(T0)) == T0
    # An ingest message (userId and events) is never a tick, whatever else it holds.
    assert (
        processors.tick_decode(orjson.dumps({"v": 1, "tick": T0, "userId": "u", "receivedAt": T0, "events": []}))
        is None
    )
    assert processors.tick_decode(orjson.dumps({"v": 2, "tick": T0})) is None
    out, _ = run([WallTick("soon")])
    assert len(out.dead_letters) == 1 and out.dead_letters[0]["reason"] == "invalid_tick"


@pytest.mark.parametrize("session", ["s1", "é" * 40, str(uuid.UUID(int=7)), "x" * 128])
def test_the_fast_video_watched_id_is_uuid5(session):
    assert views._video_watched_id_str(session) == str(processors.video_watched_id(session))


@pytest.mark.parametrize("event_id", [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid4()])
def test_the_fast_video_error_id_is_uuid5(event_id):
    row = processors.event_row(ev("error", T0, eventId=str(event_id), fatal=True), partition=0, offset=0)
    assert views.video_error(row, None)["id"] == str(processors.video_error_id(event_id))


def test_forgetting_a_revoked_partition_keeps_its_cached_changes():
    """The ticker thread reports a revoked partition at any moment: nothing cached may be lost."""
    processor, store = PartitionProcessor(), DictStore()
    events = [ev("view_start", T0), ev("playing", T0 + 500)]
    processor.process(msg(events).value(), key=b"u1", partition=0, offset=0, store=store)
    processor.forget(0)
    assert processor.next_deadline(0) is not None, "still usable until the checkpoint"
    assert processor.checkpoint() > 0
    assert (b"u1", "u") in store.data
    assert processor.next_deadline(0) is None, "dropped once written"


def test_a_small_state_cache_evicts_at_checkpoints_and_changes_no_result():
    """Entries dropped from memory are read back from the store: same rows, same stored state."""
    stream = stream_generate(views=200, users=30, seed=23, partitions=1, start_ms=T0, poison=False)
    results = []
    for entries in (5, 1_000_000):
        processor, store, outputs = PartitionProcessor(cache_entries=entries), DictStore(), []
        for i, m in enumerate(stream.messages):
            outputs.append(processor.process(m.value(), key=m.key(), partition=0, offset=i, store=store))
            if i % 10 == 9:
                processor.checkpoint()
                if entries == 5:
                    cache = processor._timers[0].cache
                    assert len(cache.values) <= max(5, len(cache.dirty)), "evicted down to the budget"
        processor.checkpoint()
        # Dedup ids are a set in memory: the order in which the stored list comes out may differ.
        state = {k: _ids_sorted(v) for k, v in map(_loads, store.data.items())}
        results.append((_comparable(outputs_merge(outputs)), state))
    assert results[0] == results[1]


def _ids_sorted(value):
    """A stored value with its dedup id lists sorted (a bucket of its own, or the user's inline one)."""
    if isinstance(value, list):
        return sorted(value)
    if isinstance(value, dict) and "i" in value:
        return {**value, "i": [value["i"][0], sorted(value["i"][1])]}
    return value


def _loads(item):
    key, value = item
    return key, orjson.loads(value)


def test_a_replay_message_stores_an_event_whose_id_was_seen():
    """A sink-stage dead letter's id was remembered before ClickHouse refused its row: a replay stores it."""
    processor, store = PartitionProcessor(), DictStore()
    event = ev("click", T0, session=None, user="u5")
    first = processor.process(orjson.dumps({"v": 2, "events": [event]}), key=None, partition=0, offset=0, store=store)
    retry = processor.process(orjson.dumps({"v": 2, "events": [event]}), key=None, partition=0, offset=1, store=store)
    replay_value = event_format.REPLAY_HEAD + orjson.dumps(event) + b"]}"
    replayed = processor.process(replay_value, key=None, partition=0, offset=2, store=store)
    assert (len(first.events), len(retry.events), retry.duplicates, len(replayed.events)) == (1, 0, 1, 1)
    assert replayed.duplicates == 0 and not replayed.dead_letters


def test_one_users_state_stays_bounded_whatever_it_sends():
    """An endless view, a thousand views and a flood of ids: the user's entry stays under 1 MB.

    Before the bounds, one view of 12k heartbeats made the state changelog message too large to
    produce, and the worker crash-looped with every partition stopped.
    """
    processor, store = PartitionProcessor(), DictStore()
    cfg = processor.config
    endless = [ev("heartbeat", T0 + i, session="endless", user="flood") for i in range(cfg.max_view_events + 10)]
    many = [ev("view_start", T0 + i, session=f"m{i}", user="flood") for i in range(cfg.max_open_views + 50)]
    ids = [ev("click", T0 + i % 1000, session=None, user="flood") for i in range(cfg.max_bucket_ids + 500)]
    outputs = []
    for offset, chunk in enumerate(range(0, len(endless + many + ids), 500)):
        events = (endless + many + ids)[chunk : chunk + 500]
        outputs.append(
            processor.process(
                orjson.dumps({"v": 2, "events": events}), key=None, partition=0, offset=offset, store=store
            )
        )
    processor.checkpoint()
    out = outputs_merge(outputs)
    assert len(out.events) == len(endless) + len(many) + len(ids), "every event is still stored"
    limited = [row for row in out.views if row[VIEW_COLUMNS.index("close_reason")] == "limit"]
    assert any(row[0] == "endless" for row in limited)
    assert len(limited) >= 50
    late = sum(1 for row in out.events if row[EVENT_COLUMNS.index("late")])
    assert late == 10, "the endless view's events after its close are late"
    entry = store.data[(b"flood", "u")]
    assert len(entry) < 1_000_000, len(entry)
    state = orjson.loads(entry)
    assert len(state["views"]) <= cfg.max_open_views and len(state["closed"]) <= cfg.max_closed_sessions


def test_a_retry_of_an_old_event_is_a_duplicate_even_when_it_was_first_seen_on_a_new_partition():
    """The dedup memory runs from when an id was *received*, not from the event's own (old) time.

    A fresh partition's first message holds only an event 30 days old; a recent event of another
    user then moves the watermark to now; the old event's retry, seconds later, must be dropped.
    """
    day = 24 * 3600 * 1000
    old = ev("click", T0 - 30 * day, session=None, user="u11")
    first = msg([dict(old, receivedAt=T0)], received_at=T0, user="u11")
    other = msg([ev("click", T0 + 1_000, session=None, user="u2")], user="u2")
    retry = msg([dict(old, receivedAt=T0 + 2_000)], received_at=T0 + 2_000, user="u11")
    out, _ = run([first, other, retry])
    assert [row[0] for row in out.events].count(uuid.UUID(old["eventId"])) == 1
    assert out.duplicates == 1
