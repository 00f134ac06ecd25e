"""The pure stream processor: messages of the ``events`` topic in, rows and derived events out.

No Kafka or ClickHouse code lives here (Snuba-style): the Quix app (``streams/app.py``) feeds it
messages with their partition/offset and a key-value ``StateStore`` backed by the Quix state store;
tests feed it plain bytes and a dict.

Why it is shaped this way:

* **Deterministic.** The output of a message depends only on the state and the message, never on
  the wall clock or arrival timing. After a crash the state is restored as of the last committed
  offset and the same messages are replayed, so the same rows (stamped with the same source
  offsets) and the same derived events come out again; the sink skips rows it already stored.
* **Event time.** Each partition keeps a watermark: the largest event time seen, where an event's
  time counts no later than the server's receive time (a client clock in the future cannot close
  everybody's views). Views close on ``ended``/``view_end`` once the watermark has passed the end
  plus a grace period, or when the watermark is 60 s past the view's last event. Events that arrive
  out of order before the view closes are sorted by event time when the view is summarised; an
  event for a view that is already closed is *late*: stored in raw with ``late = 1`` and counted,
  never applied to the closed summary.
* **Dedup by eventId** per user (the Kafka key, so one partition owns all of a user's events):
  each user's state remembers 63-bit hashes of the ids seen, in buckets of 10 minutes of the
  client's own timestamp (a retry re-sends the same id and client timestamp), each bucket kept
  until ``dedup_window_ms`` of event time after it was last touched. A message reads and writes
  only the buckets its events fall in, so the cost does not grow with the user's history. The
  newest bucket is kept inside the user's state entry, the older ones under keys of their own
  (``_seen_load``). A user with no open view gets a timer at the expiry of that memory, which
  deletes the user's state.
* **Timers without scanning.** Idle views of users who send nothing more are closed by
  per-partition timers: a user's next deadline is kept in one of ``TIMER_BUCKETS`` state entries
  (so one message re-serialises a small bucket, not the whole index) and mirrored in an in-memory
  heap that is rebuilt from the buckets whenever the partition's offsets jump (a new assignment,
  a restart, or Quix seeking back after a sink backpressure).
* **Ticks: wall-clock progress as data.** Event time only advances with events, so on a partition
  with no further traffic a finished view would never close. The worker therefore appends a *tick*
  (``{"v": 1, "tick": <wall-clock ms>}``, see ``analytics_platform/event_format.py``) to a partition
  that has been idle for ``STREAMS_IDLE_TICK_SECONDS`` while a timer is due. A tick at ``T`` means
  "the wall clock is ``T``": it raises the watermark to ``T - grace_ms`` (never lowers it; the grace
  is the allowance for events stamped before ``T`` that are still in flight from ingest or were
  stamped by a slightly slower clock) and fires the due timers. It writes no raw row, counts as no
  event and touches no user's state directly. Because the wall-clock reading is *in the message*,
  the processor stays a pure function: a replay reads the same tick at the same offset and produces
  the same rows and derived events.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import operator
import re
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType

from analytics_platform import event_format

# Column order of the ``events`` and ``view_summaries`` rows (see streams/models.py).
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "type",
    "ts",
    "user_id",
    "session_id",
    "video_id",
    "client_ts",
    "received_at",
    "position_ms",
    "bitrate_kbps",
    "error_code",
    "error_message",
    "fatal",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "properties",
    "late",
    "kafka_partition",
    "kafka_offset",
)
VIEW_COLUMNS: tuple[str, ...] = (
    "session_id",
    "user_id",
    "video_id",
    "start_ts",
    "end_ts",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "has_view_start",
    "started",
    "startup_time_ms",
    "watch_time_ms",
    "rebuffer_count",
    "rebuffer_duration_ms",
    "error_count",
    "fatal_error_count",
    "start_failure",
    "playback_failure",
    "exit_before_start",
    "max_position_ms",
    "completion",
    "event_count",
    "close_reason",
    "video_watched_id",
    "kafka_partition",
    "kafka_offset",
)

# Namespaces of the derived events' deterministic ids: the same view or error always gets the
# same id, so a consumer deduplicates replays by id.
VIDEO_WATCHED_NAMESPACE = uuid.UUID("6f1d2b1e-5b8a-4f0e-9d43-1c1f1b7a2a01")
VIDEO_ERROR_NAMESPACE = uuid.UUID("6f1d2b1e-5b8a-4f0e-9d43-1c1f1b7a2a02")

TIMER_BUCKETS = 256
DEDUP_BUCKET_MS = 600_000  # eventId hashes are stored per user per 10 minutes of client time
PARTITION_PREFIX = b"\x00partition"  # cannot collide with a userId key (never starts with NUL)
_CUSTOM_TYPE = re.compile(event_format.CUSTOM_TYPE_PATTERN)
_MIN_TS = 0  # 1970: DateTime64 range that ClickHouse stores exactly
_MAX_TS = 7_258_118_400_000  # 2200-01-01
_MAX_INT64 = 2**63 - 1
_VIEW_ENDS = frozenset(("ended", "view_end"))
_BY_EVENT_TIME = operator.itemgetter(0, 4)  # a view's stored event: [ts, type, position, fatal, arrival seq]


def _set_as_list(value: Any) -> list[Any]:
    if type(value) is set:
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable state")


def state_encode(value: Any) -> bytes:
    """A state value as the stores keep it: JSON, with sets (a user's dedup ids) as lists.

    The ids are sets in memory, also inside a user's entry; orjson calls ``default`` only for the
    types it cannot encode itself, so other values cost nothing extra.
    """
    return orjson.dumps(value, default=_set_as_list)


class StateStore(Protocol):
    """Key-value state of one partition; values are what ``state_encode`` takes."""

    def get(self, prefix: bytes, key: str) -> Any: ...

    def set(self, prefix: bytes, key: str, value: Any) -> None: ...

    def delete(self, prefix: bytes, key: str) -> None: ...


class DictStore:
    """A ``StateStore`` in a dict: for tests and the benchmark's pure-processor baseline."""

    def __init__(self) -> None:
        self.data: dict[tuple[bytes, str], Any] = {}

    def get(self, prefix: bytes, key: str) -> Any:
        value = self.data.get((prefix, key))
        # Round-trip through JSON like the Quix store does, so tests catch unserialisable state.
        return None if value is None else orjson.loads(value)

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        self.data[(prefix, key)] = state_encode(value)

    def delete(self, prefix: bytes, key: str) -> None:
        self.data.pop((prefix, key), None)


@dataclass(frozen=True)
class ProcessorConfig:
    idle_timeout_ms: int = 60_000
    grace_ms: int = 5_000
    dedup_window_ms: int = 24 * 3600 * 1000
    closed_memory_ms: int = 3600 * 1000  # how long a closed session id is remembered (late detection)


@dataclass
class Output:
    """Everything one message produced. Rows are tuples in ``EVENT_COLUMNS``/``VIEW_COLUMNS`` order."""

    partition: int
    offset: int
    events: list[tuple[Any, ...]] = field(default_factory=list)
    views: list[tuple[Any, ...]] = field(default_factory=list)
    video_watched: list[dict[str, Any]] = field(default_factory=list)
    video_errors: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0


class PoisonError(ValueError):
    """A message or event that can never be processed; it goes to the dead-letter topic."""


def _str(event: dict[str, Any], name: str, *, required: bool = False, max_len: int = 1 << 16) -> str:
    value = event.get(name)
    if value is None:
        if required:
            raise PoisonError(f"{name}: missing")
        return ""
    if not isinstance(value, str) or len(value) > max_len or (required and not value):
        raise PoisonError(f"{name}: not a string of 1-{max_len} characters")
    return value


def _int(event: dict[str, Any], name: str, *, low: int = 0, high: int = _MAX_INT64) -> int | None:
    value = event.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PoisonError(f"{name}: not an integer in [{low}, {high}]")
    return value


def _ts(event: dict[str, Any], name: str) -> int:
    value = _int(event, name, low=_MIN_TS, high=_MAX_TS)
    if value is None:
        raise PoisonError(f"{name}: missing")
    return value


TICK_MAX_BYTES = 64  # a tick is ``{"v":1,"tick":<13 digits>}``: only short messages are checked for one


def tick_decode(value: bytes) -> int | None:
    """The wall-clock time (epoch ms) of a tick message, or None when ``value`` is not a tick.

    A tick is an object with ``v`` 1 and an integer ``tick`` and neither ``userId`` nor ``events``:
    an ingest message can never be one (ingest always writes both), so a client cannot forge one.
    Raises PoisonError for a tick whose time is not an integer in the stored range.
    """
    if len(value) > TICK_MAX_BYTES or b'"tick"' not in value:
        return None
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or "tick" not in body or "userId" in body or "events" in body:
        return None
    if body.get("v") != event_format.MESSAGE_VERSION:
        return None  # the ordinary path dead-letters an unknown version
    return _ts(body, "tick")


def tick_message(wall_clock_ms: int) -> bytes:
    """The value of a tick message (produced by the stream workers only, never by ingest)."""
    return orjson.dumps({"v": event_format.MESSAGE_VERSION, "tick": wall_clock_ms})


def message_decode(value: bytes) -> list[tuple[str, list[Any]]]:
    """Parse a message of the events topic into (userId, raw events) groups. Raises PoisonError.

    v1 (one user's request): one group. v2 (a partition's coalesced batch): one group per userId,
    in order of first appearance, each user's events in message order. An event of a v2 message
    without a usable ``userId`` is put in a group of its own under ``""``: ``event_row`` then
    dead-letters it with the reason (its user's state cannot be found without one).
    """
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise PoisonError(f"not JSON: {exc}") from exc
    if type(body) is not dict:
        raise PoisonError("not a JSON object")
    version = body.get("v")
    events = body.get("events")
    if version == event_format.BATCH_VERSION:
        if type(events) is not list:
            raise PoisonError("events: not a list")
        groups: dict[str, list[Any]] = {}
        for raw in events:
            user = raw.get("userId") if type(raw) is dict else None
            if type(user) is not str:
                user = ""
            group = groups.get(user)
            if group is None:
                groups[user] = [raw]
            else:
                group.append(raw)
        return list(groups.items())
    if version != event_format.MESSAGE_VERSION:
        raise PoisonError(f"unknown message version {version!r}")
    if type(events) is not list:
        raise PoisonError("events: not a list")
    user = _str(body, "userId", required=True, max_len=128)
    _ts(body, "receivedAt")
    return [(user, events)]


_OPTIONAL_STRINGS: tuple[tuple[str, int], ...] = (
    ("errorCode", 256),
    ("errorMessage", 4096),
    ("device", 256),
    ("os", 256),
    ("browser", 256),
    ("country", 256),
    ("cdn", 256),
    ("player", 256),
)


def event_row(event: Any, *, partition: int, offset: int, late: bool = False) -> tuple[Any, ...]:
    """Validate one event (already normalised by ingest) into an ``events`` row. Raises PoisonError.

    Everything ClickHouse could refuse is checked here: one bad row would otherwise fail its whole
    batch on every retry and stop the partition. The checks are inlined: this runs once per event.
    """
    if type(event) is not dict:
        raise PoisonError("event: not a JSON object")
    get = event.get
    raw_id = get("eventId")
    if type(raw_id) is not str:
        raise PoisonError("eventId: missing")
    try:
        event_id = uuid.UUID(raw_id)
    except ValueError as exc:
        raise PoisonError("eventId: not a UUID") from exc
    etype = get("type")
    if type(etype) is not str:
        raise PoisonError("type: missing")
    playback = etype in event_format.PLAYBACK_TYPES
    if not playback and not _CUSTOM_TYPE.match(etype):
        raise PoisonError(f"type: {etype[:80]!r} is neither a playback type nor a custom type")
    user = get("userId")
    session = get("sessionId")
    video = get("videoId")
    if session is None:
        session = ""
    if video is None:
        video = ""
    if type(user) is not str or not 0 < len(user) <= 128:
        raise PoisonError("userId: not a string of 1-128 characters")
    if type(session) is not str or len(session) > 128 or (playback and not session):
        raise PoisonError("sessionId: not a string of 1-128 characters")
    if type(video) is not str or len(video) > 256 or (playback and not video):
        raise PoisonError("videoId: not a string of 1-256 characters")
    strings = []
    for name, max_len in _OPTIONAL_STRINGS:
        value = get(name)
        if value is None:
            value = ""
        elif type(value) is not str or len(value) > max_len:
            raise PoisonError(f"{name}: not a string of at most {max_len} characters")
        strings.append(value)
    properties = get("properties")
    if properties is not None and type(properties) is not dict:
        raise PoisonError("properties: not an object")
    fatal = get("fatal")
    if fatal is None:
        fatal = True
    elif type(fatal) is not bool:
        raise PoisonError("fatal: not a boolean")
    ts = get("timestamp")
    client_ts = get("clientTimestamp", ts)
    received_at = get("receivedAt")
    position = get("positionMs")
    bitrate = get("bitrateKbps")
    # Fast path: exact ints in range (bool is not an int here); the slow path names the field.
    if not (
        type(ts) is int
        and type(client_ts) is int
        and type(received_at) is int
        and _MIN_TS <= ts <= _MAX_TS
        and _MIN_TS <= client_ts <= _MAX_TS
        and _MIN_TS <= received_at <= _MAX_TS
    ):
        ts = _ts(event, "timestamp")
        client_ts = _ts(event, "clientTimestamp") if "clientTimestamp" in event else ts
        received_at = _ts(event, "receivedAt")
    if position is not None and not (type(position) is int and 0 <= position <= _MAX_INT64):
        _int(event, "positionMs")
    if bitrate is not None and not (type(bitrate) is int and 0 <= bitrate <= _MAX_INT64):
        _int(event, "bitrateKbps")
    return (
        event_id,
        etype,
        ts,
        user,
        session,
        video,
        client_ts,
        received_at,
        position,
        bitrate,
        strings[0],
        strings[1],
        fatal and etype == "error",
        *strings[2:],
        orjson.dumps(properties).decode() if properties else "",
        late,
        partition,
        offset,
    )


_Ts = Annotated[int, Meta(ge=_MIN_TS, le=_MAX_TS)]
_NonNegative = Annotated[int, Meta(ge=0, le=_MAX_INT64)]
_Dimension = Annotated[str, Meta(max_length=256)]


class _EventIn(msgspec.Struct, gc=False):
    """An event as ``event_row`` accepts it, checked by msgspec in C (the fast path).

    ``gc=False``: a decoded event cannot be part of a reference cycle, so the cyclic collector need
    not track the thousands decoded per second.

    At least as strict as ``event_row`` on every field (anything it refuses falls back to the slow
    path, which then names the field), so both paths give the same rows.
    """

    eventId: uuid.UUID
    type: str  # checked in ``_struct_row``: a pattern here ran the regex on every event (40% of decoding)
    userId: Annotated[str, Meta(min_length=1, max_length=128)]
    timestamp: _Ts
    receivedAt: _Ts
    clientTimestamp: _Ts | UnsetType = UNSET
    sessionId: Annotated[str, Meta(max_length=128)] | None = None
    videoId: Annotated[str, Meta(max_length=256)] | None = None
    positionMs: _NonNegative | None = None
    bitrateKbps: _NonNegative | None = None
    errorCode: _Dimension | None = None
    errorMessage: Annotated[str, Meta(max_length=4096)] | None = None
    fatal: bool | None = None
    device: _Dimension | None = None
    os: _Dimension | None = None
    browser: _Dimension | None = None
    country: _Dimension | None = None
    cdn: _Dimension | None = None
    player: _Dimension | None = None
    properties: dict[str, Any] | None = None


class _MessageIn(msgspec.Struct, gc=False):
    v: int
    events: list[_EventIn]
    userId: str | UnsetType = UNSET
    receivedAt: int | UnsetType = UNSET


_message_in = msgspec.json.Decoder(_MessageIn)

# A user's validated events: (row, properties) pairs, in message order.
RowGroups = list[tuple[str, list[tuple[tuple[Any, ...], dict[str, Any] | None]]]]


def message_rows(
    value: bytes, *, key: bytes | None, partition: int, offset: int
) -> tuple[RowGroups, list[dict[str, Any]]]:
    """Decode and validate a message into per-user rows and the dead letters of its bad events.

    Raises PoisonError when the message as a whole is unusable. Two paths, like ingest's: msgspec
    decodes and checks the whole message in C (about 3x cheaper per event than orjson plus
    ``event_row``); when anything in it fails, the slow path goes event by event, so that only the
    bad events are dead-lettered, each with the reason. Both paths give the same rows.
    """
    with contextlib.suppress(Exception):  # any surprise of the fast path: the slow path is the reference
        return _rows_fast(_message_in.decode(value), partition, offset), []
    groups: RowGroups = []
    dead: list[dict[str, Any]] = []
    for user, raw_events in message_decode(value):
        rows = []
        for raw in raw_events:
            try:
                row = event_row(raw, partition=partition, offset=offset)
            except PoisonError as exc:
                dead.append(_dead_letter(str(exc), orjson.dumps(raw), key, partition, offset))
                continue
            properties = raw.get("properties")
            rows.append((row, properties if type(properties) is dict else None))
        if rows:
            groups.append((user, rows))
    return groups, dead


def _rows_fast(message: _MessageIn, partition: int, offset: int) -> RowGroups:
    if message.v == event_format.BATCH_VERSION:
        by_user: dict[str, list[tuple[tuple[Any, ...], dict[str, Any] | None]]] = {}
        for event in message.events:
            rows = by_user.get(event.userId)
            if rows is None:
                rows = by_user[event.userId] = []
            rows.append((_struct_row(event, partition, offset), event.properties))
        return list(by_user.items())
    user, received_at = message.userId, message.receivedAt
    if (
        message.v != event_format.MESSAGE_VERSION
        or type(user) is not str
        or not 0 < len(user) <= 128
        or type(received_at) is not int
        or not _MIN_TS <= received_at <= _MAX_TS
    ):
        raise PoisonError("not a valid v1 message")  # the slow path says what exactly
    rows = [(_struct_row(event, partition, offset), event.properties) for event in message.events]
    return [(user, rows)] if rows else []


def _struct_row(event: _EventIn, partition: int, offset: int) -> tuple[Any, ...]:
    """``event_row`` for an event msgspec already checked: only the cross-field rules remain."""
    etype = event.type
    session = event.sessionId or ""
    video = event.videoId or ""
    if etype in event_format.PLAYBACK_TYPES:
        if not (session and video):
            raise PoisonError("playback event without sessionId/videoId")
    elif not _CUSTOM_TYPE.match(etype):
        raise PoisonError("type: not a playback or custom type")  # the slow path names it
    ts = event.timestamp
    client_ts = event.clientTimestamp
    properties = event.properties
    return (
        event.eventId,
        etype,
        ts,
        event.userId,
        session,
        video,
        ts if client_ts is UNSET else client_ts,
        event.receivedAt,
        event.positionMs,
        event.bitrateKbps,
        event.errorCode or "",
        event.errorMessage or "",
        event.fatal is not False and etype == "error",
        event.device or "",
        event.os or "",
        event.browser or "",
        event.country or "",
        event.cdn or "",
        event.player or "",
        orjson.dumps(properties).decode() if properties else "",
        False,
        partition,
        offset,
    )


# Indexes into an events row, for the hot path.
_ID, _TYPE, _TS, _USER, _SESSION, _VIDEO, _CLIENT_TS, _RECEIVED_AT = 0, 1, 2, 3, 4, 5, 6, 7
_POS, _ERRCODE, _ERRMSG, _FATAL, _LATE, _OFFSET = 8, 10, 11, 12, 20, 22
_DIMS = slice(13, 19)
_DIM_NAMES = ("device", "os", "browser", "country", "cdn", "player")


def view_summarize(view: dict[str, Any]) -> dict[str, Any]:
    """The QoE figures of one view from its stored events (API.md definitions).

    Events are sorted by event time (arrival order breaks ties), then a player-state machine runs
    over them: the time between consecutive events counts as watch time while the state is
    ``playing`` or ``rebuffering`` (and as rebuffer time while ``rebuffering``); paused, seeking,
    stopped and not-yet-started time does not count.
    """
    events = sorted(view["e"], key=_BY_EVENT_TIME)
    # One pass: the first view_start and playing, and the first fatal error (a start failure when
    # it comes before the first playing), are noted on the way rather than found by extra scans.
    view_start = first_playing = first_fatal = None
    state = "idle"
    previous_ts = events[0][0]
    watch = rebuffer = rebuffer_count = errors = fatal_errors = 0
    max_position = 0
    ended = False
    for ts, etype, position, fatal, _seq in events:
        if state == "playing":
            watch += ts - previous_ts
        elif state == "rebuffering":
            watch += ts - previous_ts
            rebuffer += ts - previous_ts
        previous_ts = ts
        if position is not None and position > max_position:
            max_position = position
        if etype == "playing":
            state = "playing"
            if first_playing is None:
                first_playing = ts
        elif etype == "heartbeat":
            pass  # the most common event: no change of state
        elif etype == "view_start":
            if view_start is None:
                view_start = ts
        elif etype == "rebuffer_start":
            if state != "rebuffering":
                rebuffer_count += 1
            state = "rebuffering"
        elif etype == "rebuffer_end":
            if state == "rebuffering":
                state = "playing"
        elif etype == "pause":
            state = "paused"
        elif etype == "seek":
            state = "seeking"
        elif etype in ("ended", "view_end"):
            state = "stopped"
            ended = ended or etype == "ended"
        elif etype == "error":
            errors += 1
            if fatal:
                fatal_errors += 1
                if first_fatal is None:
                    first_fatal = ts
                state = "stopped"
    start_ts = view_start if view_start is not None else events[0][0]
    playback_failure = first_fatal is not None
    start_failure = first_fatal is not None and (first_playing is None or first_fatal < first_playing)
    duration = view.get("d")
    if ended:
        completion: float | None = 1.0
    elif duration:
        completion = min(1.0, max_position / duration)
    else:
        completion = None
    started = first_playing is not None
    return {
        "start_ts": start_ts,
        "end_ts": events[-1][0],
        "has_view_start": view_start is not None,
        "started": started,
        "startup_time_ms": max(0, first_playing - start_ts) if started and view_start is not None else 0,
        "watch_time_ms": watch,
        "rebuffer_count": rebuffer_count,
        "rebuffer_duration_ms": rebuffer,
        "error_count": errors,
        "fatal_error_count": fatal_errors,
        "start_failure": start_failure,
        "playback_failure": playback_failure,
        "exit_before_start": not started and not playback_failure,
        "max_position_ms": max_position,
        "completion": completion,
        "event_count": len(events),
        "ended": ended,  # an ``ended`` event, not only ``view_end`` (the close reason)
    }


def _seen_load(store: StateStore, prefix: bytes, user_state: dict[str, Any], bucket_id: int) -> set[int]:
    """The id hashes of one of the user's dedup buckets, as a set that the caller may extend.

    The newest bucket lives inside the user's state (``i``: ``[bucket, ids]``), which is written at
    every checkpoint the user is active anyway: an active user then costs one state write per
    checkpoint instead of two (each write is serialised, produced to the changelog and put in
    RocksDB). A newer bucket takes its place and the older one moves to a key of its own
    (``d<bucket>``), where the buckets of states written before ``i`` existed also are.
    ``b`` lists every bucket the user has, so a new bucket costs no lookup (a miss in RocksDB).
    """
    inline = user_state.get("i")
    if inline is not None and inline[0] == bucket_id:
        current = inline[1]
        if type(current) is not set:  # a list from the store
            current = inline[1] = set(current)
        return current
    if str(bucket_id) in user_state["b"]:
        stored = store.get(prefix, f"d{bucket_id}")
        return stored if type(stored) is set else set(stored or ())
    ids: set[int] = set()
    if inline is None or bucket_id > inline[0]:
        if inline is not None:
            store.set(prefix, f"d{inline[0]}", inline[1])
        user_state["i"] = [bucket_id, ids]
    return ids


def video_watched_id(session_id: str) -> uuid.UUID:
    return uuid.uuid5(VIDEO_WATCHED_NAMESPACE, session_id)


_WATCHED_NAMESPACE_BYTES = VIDEO_WATCHED_NAMESPACE.bytes


def _video_watched_id_str(session_id: str) -> str:
    """``str(video_watched_id(session_id))`` in a fifth of the time (it runs once per view)."""
    return _uuid5_str(_WATCHED_NAMESPACE_BYTES, session_id)


def _uuid5_str(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without building UUID objects."""
    digest = bytearray(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def video_error_id(event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(VIDEO_ERROR_NAMESPACE, str(event_id))


_ERROR_NAMESPACE_BYTES = VIDEO_ERROR_NAMESPACE.bytes


class _StateCache:
    """A write-back cache over one partition's ``StateStore`` (like Kafka Streams' record cache).

    Reads go to the backend once and are then served from memory (misses are remembered too);
    writes only mark the entry dirty. ``flush`` (once per checkpoint, before Quix produces the
    changelog and commits) writes each dirty entry once, however many messages changed it. Why: the
    Quix store serialises the key and the value on every ``set`` and deserialises on every ``get``;
    the partition watermark and the timer buckets changed on almost every message, and a user's
    state on each of its messages.

    Values are shared, mutable objects: the processor must ``set`` what it changed (it does). The
    backend is rebound on each message (Quix opens a new transaction per checkpoint).
    """

    __slots__ = ("backend", "dirty", "values")

    def __init__(self, backend: StateStore) -> None:
        self.backend = backend
        self.values: dict[tuple[bytes, str], Any] = {}
        self.dirty: set[tuple[bytes, str]] = set()

    def get(self, prefix: bytes, key: str) -> Any:
        entry = (prefix, key)
        try:
            return self.values[entry]
        except KeyError:
            value = self.values[entry] = self.backend.get(prefix, key)
            return value

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        entry = (prefix, key)
        self.values[entry] = value
        self.dirty.add(entry)

    def delete(self, prefix: bytes, key: str) -> None:
        entry = (prefix, key)
        self.values[entry] = None
        self.dirty.add(entry)

    def flush(self, capacity: int) -> int:
        """Write the dirty entries to the backend; keep at most ``capacity`` entries cached."""
        backend = self.backend
        values = self.values
        for entry in self.dirty:
            value = values[entry]
            if value is None:
                backend.delete(*entry)
            else:
                backend.set(entry[0], entry[1], value)
        written = len(self.dirty)
        if len(values) > capacity:
            # Keep what this checkpoint wrote (the active users), drop the rest.
            self.values = {entry: values[entry] for entry in self.dirty} if written <= capacity else {}
        self.dirty = set()
        return written


class _PartitionTimers:
    """One partition's state cache and the in-memory mirror of its watermark and timer buckets."""

    def __init__(self, store: StateStore) -> None:
        self.cache = cache = _StateCache(store)
        self.watermark: int = cache.get(PARTITION_PREFIX, "wm") or 0
        self.buckets: list[dict[str, int]] = [cache.get(PARTITION_PREFIX, f"t{i}") or {} for i in range(TIMER_BUCKETS)]
        self.heap: list[tuple[int, str]] = [(d, u) for b in self.buckets for u, d in b.items()]
        heapq.heapify(self.heap)
        self.last_offset = -2

    def bucket_of(self, prefix: bytes) -> int:
        """The timer bucket of the user whose state key prefix (the encoded userId) is ``prefix``."""
        # A stable hash (Python's str hash is salted per process).
        return zlib.crc32(prefix) % TIMER_BUCKETS


class PartitionProcessor:
    """Processes the messages of the partitions one worker owns; state lives in the given stores.

    State changes are cached per partition (``_StateCache``) and reach the stores only at
    ``checkpoint()``, which the worker calls before each commit (``streams.app.StateFlushSink``)
    and tests call before they look into a store.
    """

    def __init__(self, config: ProcessorConfig | None = None, *, cache_entries: int = 150_000) -> None:
        self.config = config or ProcessorConfig()
        self.cache_entries = cache_entries
        self._timers: dict[int, _PartitionTimers] = {}
        self._forgotten: set[int] = set()  # revoked partitions, dropped at the next checkpoint

    def checkpoint(self) -> int:
        """Write every partition's cached state changes to its store; return how many entries."""
        partitions = list(self._timers.values())
        capacity = self.cache_entries // max(1, len(partitions))  # the budget is the process's
        written = sum(t.cache.flush(capacity) for t in partitions)
        forgotten, self._forgotten = self._forgotten, set()
        for partition in forgotten:
            self._timers.pop(partition, None)  # written above: nothing is lost
        return written

    def process(self, value: bytes, *, key: bytes | None, partition: int, offset: int, store: StateStore) -> Output:
        """Process one message against ``store`` (changes are cached until ``checkpoint()``)."""
        out = Output(partition=partition, offset=offset)
        timers = self._timers.get(partition)
        if timers is None or offset != timers.last_offset + 1:
            # First message here, or the offsets jumped (a new assignment, a restart, a rewind after
            # sink backpressure whose checkpoint was dropped): the stored state is the truth.
            timers = self._timers[partition] = _PartitionTimers(store)
        else:
            timers.cache.backend = store
        timers.last_offset = offset
        try:
            self._process(value, key, timers, out)
        except BaseException:
            # A failure part-way may have changed cached objects without marking them: write all of
            # it, so the store holds exactly what later messages of this process see (a replay
            # fails at the same point, leaving the same state).
            timers.cache.dirty.update(timers.cache.values)
            raise
        return out

    def _process(self, value: bytes, key: bytes | None, timers: _PartitionTimers, out: Output) -> None:
        partition, offset = out.partition, out.offset
        store = timers.cache
        try:
            tick = tick_decode(value)
        except PoisonError as exc:
            out.dead_letters.append(_dead_letter(str(exc), value, key, partition, offset))
            return
        if tick is not None:
            self._tick(timers, store, tick, out)
            return
        try:
            groups, out.dead_letters = message_rows(value, key=key, partition=partition, offset=offset)
        except PoisonError as exc:
            out.dead_letters.append(_dead_letter(str(exc), value, key, partition, offset))
            return
        watermark = timers.watermark
        cfg = self.config
        late_horizon = watermark - cfg.idle_timeout_ms - cfg.grace_ms
        message_time = 0
        touched: list[tuple[str, bytes, dict[str, Any], dict[int, set[int]]]] = []
        earlier: set[str] = set()  # users whose deadline this message may bring forward
        for user, rows in groups:
            prefix = user.encode()
            user_state: dict[str, Any] | None = None
            views: dict[str, Any] = {}
            closed: dict[str, int] = {}
            seen_buckets: dict[int, set[int]] = {}
            for valid_row, properties in rows:
                row = valid_row
                if user_state is None:
                    # Loaded at the first valid event: a group of only bad events touches no state.
                    user_state = store.get(prefix, "u") or {"views": {}, "closed": {}, "b": {}}
                    views = user_state["views"]
                    closed = user_state["closed"]
                    touched.append((user, prefix, user_state, seen_buckets))
                # Dedup: a retry re-sends the event with the same id and the same client timestamp
                # (its corrected timestamp may differ), so ids are kept in buckets of client time.
                bucket_id = row[_CLIENT_TS] // DEDUP_BUCKET_MS
                seen = seen_buckets.get(bucket_id)
                if seen is None:
                    seen = seen_buckets[bucket_id] = _seen_load(store, prefix, user_state, bucket_id)
                event_hash = row[_ID].int >> 65
                if event_hash in seen:
                    out.duplicates += 1
                    continue
                seen.add(event_hash)
                ts = row[_TS]
                received_at = row[_RECEIVED_AT]
                event_time = ts if ts < received_at else received_at
                message_time = max(message_time, event_time)
                session = row[_SESSION]
                view = views.get(session) if session else None
                late = False
                if session and view is None:
                    if session in closed or ts < late_horizon:
                        late = True
                    else:
                        view = views[session] = {"e": [], "u": user, "v": row[_VIDEO], "dims": [""] * 6}
                        earlier.add(user)
                if late:
                    row = (*row[:_LATE], True, *row[_LATE + 1 :])
                    out.late += 1
                out.events.append(row)
                if view is not None:
                    self._view_add(view, row, properties)
                    if row[_TYPE] in _VIEW_ENDS:
                        earlier.add(user)
                if row[_FATAL]:
                    out.video_errors.append(_video_error(row, view))
        # Advance the watermark, then close what is due: these users' views and other users' timers.
        if message_time > watermark:
            watermark = timers.watermark = message_time
            store.set(PARTITION_PREFIX, "wm", watermark)
        # Views that are due now are closed by the timers below: a user's armed timer is never later
        # than its earliest view deadline, so closing them here too would only repeat the work.
        for user, prefix, user_state, seen_buckets in touched:
            self._seen_save(store, prefix, user_state, seen_buckets, watermark)
            # Only a new view or an end can bring a user's deadline forward (later events of a view
            # and a later watermark move it back): otherwise an armed timer is early enough as it
            # is, and ``_timer_set`` would find so after computing the deadline.
            if user in earlier or timers.buckets[timers.bucket_of(prefix)].get(user) is None:
                self._timer_set(timers, store, user, prefix, user_state, exact=False)
            store.set(prefix, "u", user_state)
        self._timers_fire(timers, store, watermark, out)

    def _tick(self, timers: _PartitionTimers, store: StateStore, wall_clock_ms: int, out: Output) -> None:
        """Advance the watermark to ``wall_clock_ms - grace`` (never backwards) and fire due timers."""
        target = wall_clock_ms - self.config.grace_ms
        if target <= timers.watermark:
            return  # traffic (or an earlier tick) already took the partition this far: nothing to do
        timers.watermark = target
        store.set(PARTITION_PREFIX, "wm", target)
        self._timers_fire(timers, store, target, out)

    def next_deadline(self, partition: int) -> int | None:
        """The earliest armed timer of ``partition`` (event-time ms), for the worker's ticker.

        ``None``: this process has not loaded the partition's timers (no message since the
        assignment), so it cannot tell: the ticker ticks, and the tick loads them. ``_MAX_TS + 1``:
        no timer armed. May be earlier than the truth (a superseded heap entry): the tick it causes
        then finds nothing due and drops that entry. Read from another thread without a lock: the
        reads are single operations on the list and dict (atomic under the GIL) and any race only
        makes the answer early or unknown, which costs one spare tick.
        """
        timers = self._timers.get(partition)
        if timers is None:
            return None
        try:
            return timers.heap[0][0]
        except IndexError:
            return _MAX_TS + 1

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's cached state and timers at the next checkpoint, once written.

        Called from the ticker's thread: dropping at once could lose changes the main thread is
        still making (or has cached, not yet written). Correctness does not depend on it (a
        partition that comes back with other offsets is reloaded from the store): it frees memory.
        """
        self._forgotten.add(partition)

    def _view_add(self, view: dict[str, Any], row: tuple[Any, ...], properties: dict[str, Any] | None) -> None:
        etype = row[_TYPE]
        ts = row[_TS]
        events = view["e"]
        # The arrival number breaks ties of event time; views stored before it was derived from
        # the list's length kept it in "seq", which always equalled that length.
        events.append([ts, etype, row[_POS], row[_FATAL], len(events) + 1])
        if etype == "view_start" or not view.get("s"):
            # The view's context comes from its view_start (else its first event).
            view["s"] = etype == "view_start"
            view["v"] = row[_VIDEO] or view["v"]
            view["dims"] = [new or old for new, old in zip(row[_DIMS], view["dims"], strict=True)]
        if etype in ("ended", "view_end"):
            end = view.get("end")
            if end is None or ts > end:
                view["end"] = ts
        last = view.get("last")
        if last is None or ts > last:
            view["last"] = ts
        if properties:
            duration = properties.get("durationMs")
            if isinstance(duration, int) and not isinstance(duration, bool) and duration > 0:
                view["d"] = duration

    def _deadline(self, view: dict[str, Any]) -> int:
        end = view.get("end")
        if end is not None:
            return int(end) + self.config.grace_ms
        return int(view["last"]) + self.config.idle_timeout_ms

    def _views_close(self, user: str, user_state: dict[str, Any], watermark: int, out: Output) -> None:
        views = user_state["views"]
        if views:
            deadline = self._deadline
            due = [s for s, v in views.items() if deadline(v) <= watermark]
            if due:
                due.sort()
                closed_now = user_state["closed"]
                for session in due:
                    view = views.pop(session)
                    closed_now[session] = watermark
                    self._view_emit(session, user, view, out)
        closed: dict[str, int] = user_state["closed"]
        # Entries are added with the partition's watermark, which never decreases, so the first is
        # the oldest: when it is still within memory, all are (no rebuild of the dict per message).
        if closed and next(iter(closed.values())) < watermark - self.config.closed_memory_ms:
            horizon = watermark - self.config.closed_memory_ms
            user_state["closed"] = {s: t for s, t in closed.items() if t >= horizon}

    def _seen_save(
        self,
        store: StateStore,
        prefix: bytes,
        user_state: dict[str, Any],
        seen_buckets: dict[int, set[int]],
        watermark: int,
    ) -> None:
        """Store the touched id buckets; drop the buckets nobody touched for ``dedup_window_ms``.

        ``user_state["b"]`` maps a bucket to when it was last touched, least recently touched first
        (a touched bucket moves to the end), so expiry looks at the front only.
        """
        touched: dict[str, int] = user_state["b"]
        inline = user_state.get("i")
        inline_id = inline[0] if inline is not None else None
        for bucket_id, ids in seen_buckets.items():
            if bucket_id != inline_id:
                store.set(prefix, f"d{bucket_id}", ids)  # a set: stored as a JSON list
            name = str(bucket_id)
            touched.pop(name, None)
            touched[name] = watermark
        horizon = watermark - self.config.dedup_window_ms
        while touched:
            bucket_key, last = next(iter(touched.items()))
            if last >= horizon:
                break
            if inline_id is not None and bucket_key == str(inline_id):
                del user_state["i"]
                inline_id = None
            else:
                store.delete(prefix, f"d{bucket_key}")
            del touched[bucket_key]

    def _timer_set(
        self,
        timers: _PartitionTimers,
        store: StateStore,
        user: str,
        prefix: bytes,
        user_state: dict[str, Any],
        *,
        exact: bool,
    ) -> None:
        """Arm the user's timer at its earliest view deadline (no open view: when its state expires).

        After a message (``exact=False``) an armed timer that is *earlier* than needed is left as it
        is: it will fire, find nothing due, and be re-armed exactly. That saves rewriting a timer
        bucket on almost every message (a view's deadline moves with each of its events).
        """
        deadline = self._user_deadline(user_state)
        index = timers.bucket_of(prefix)
        bucket = timers.buckets[index]
        armed = bucket.get(user)
        if armed == deadline or (not exact and armed is not None and (deadline is None or armed < deadline)):
            return
        if deadline is None:
            bucket.pop(user, None)
        else:
            bucket[user] = deadline
            heapq.heappush(timers.heap, (deadline, user))
        store.set(PARTITION_PREFIX, f"t{index}", bucket)

    def _user_deadline(self, user_state: dict[str, Any]) -> int | None:
        views = user_state["views"]
        if views:
            return min(map(self._deadline, views.values()))
        # Nothing open: wake up when the dedup ids and closed-session memory have all expired, to
        # delete the user's state (users who never come back must not stay in the store forever).
        last = max([*user_state["b"].values(), *user_state["closed"].values()], default=None)
        if last is None:
            return None
        return int(last) + max(self.config.dedup_window_ms, self.config.closed_memory_ms) + 1

    def _timers_fire(self, timers: _PartitionTimers, store: StateStore, watermark: int, out: Output) -> None:
        heap = timers.heap
        while heap and heap[0][0] <= watermark:
            deadline, user = heapq.heappop(heap)
            prefix = user.encode()
            if timers.buckets[timers.bucket_of(prefix)].get(user) != deadline:
                continue  # superseded by a later deadline (lazy deletion)
            user_state = store.get(prefix, "u") or {"views": {}, "closed": {}, "b": {}}
            self._views_close(user, user_state, watermark, out)
            self._seen_save(store, prefix, user_state, {}, watermark)
            self._timer_set(timers, store, user, prefix, user_state, exact=True)
            if user_state["views"] or user_state["closed"] or user_state["b"]:
                store.set(prefix, "u", user_state)
            else:
                store.delete(prefix, "u")

    def _view_emit(self, session: str, user: str, view: dict[str, Any], out: Output) -> None:
        f = view_summarize(view)
        closed_by = "ended" if f["ended"] else "view_end"
        reason = "idle" if view.get("end") is None else closed_by
        watched_id = _video_watched_id_str(session)
        video = view["v"]
        device, os_name, browser, country, cdn, player = view["dims"]
        started = f["started"]
        out.views.append(
            (
                session,
                user,
                video,
                f["start_ts"],
                f["end_ts"],
                device,
                os_name,
                browser,
                country,
                cdn,
                player,
                f["has_view_start"],
                started,
                f["startup_time_ms"],
                f["watch_time_ms"],
                f["rebuffer_count"],
                f["rebuffer_duration_ms"],
                f["error_count"],
                f["fatal_error_count"],
                f["start_failure"],
                f["playback_failure"],
                f["exit_before_start"],
                f["max_position_ms"],
                f["completion"],
                f["event_count"],
                reason,
                watched_id,
                out.partition,
                out.offset,
            )
        )
        out.video_watched.append(
            {
                "id": watched_id,
                "type": "VideoWatched",
                "userId": user,
                "sessionId": session,
                "videoId": video,
                "startTime": f["start_ts"],
                "endTime": f["end_ts"],
                "watchTimeMs": f["watch_time_ms"],
                "startupTimeMs": f["startup_time_ms"] if started else None,
                "rebufferCount": f["rebuffer_count"],
                "rebufferDurationMs": f["rebuffer_duration_ms"],
                "completionFraction": f["completion"],
                "failed": f["playback_failure"],
                "closeReason": reason,
                "device": device,
                "os": os_name,
                "browser": browser,
                "country": country,
                "cdn": cdn,
                "player": player,
            }
        )


def _video_error(row: tuple[Any, ...], view: dict[str, Any] | None) -> dict[str, Any]:
    view_start = None
    if view is not None:
        view_start = next((e[0] for e in view["e"] if e[1] == "view_start"), None)
    event_id = str(row[_ID])
    return {
        "id": _uuid5_str(_ERROR_NAMESPACE_BYTES, event_id),  # video_error_id, faster
        "type": "VideoError",
        "eventId": event_id,
        "userId": row[_USER],
        "sessionId": row[_SESSION],
        "videoId": row[_VIDEO],
        "timestamp": row[_TS],
        "errorCode": row[_ERRCODE],
        "errorMessage": row[_ERRMSG],
        "positionMs": row[_POS],
        "viewStartTime": view_start,
        "timeSinceViewStartMs": row[_TS] - view_start if view_start is not None else None,
        **dict(zip(_DIM_NAMES, row[_DIMS], strict=True)),
    }


def _dead_letter(reason: str, payload: bytes, key: bytes | None, partition: int, offset: int) -> dict[str, Any]:
    return {
        "reason": reason,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "payload": payload.decode("utf-8", "replace"),
    }


def outputs_merge(outputs: Iterable[Output]) -> Output:
    """Concatenate the outputs of consecutive messages (tests and the benchmark use it)."""
    merged: Output | None = None
    for item in outputs:
        if merged is None:
            merged = Output(partition=item.partition, offset=item.offset)
        merged.offset = item.offset
        merged.events += item.events
        merged.views += item.views
        merged.video_watched += item.video_watched
        merged.video_errors += item.video_errors
        merged.dead_letters += item.dead_letters
        merged.duplicates += item.duplicates
        merged.late += item.late
    return merged or Output(partition=-1, offset=-1)
