"""Messages of the ``events`` topic decoded into ``events`` rows, one bad event at a time.

The rules are the event contract of ``analytics_platform/event_format.py`` (the same bounds
ingest validates with), so an event ingest accepted always decodes here. Anything else that can
reach the topic (an older or foreign producer, a hand-made message, a replay) is refused *per
event*: an event that cannot be decoded, validated or encoded becomes one dead letter with its
original bytes and a reason, and the other events of its message are processed as usual. Only a
message whose envelope is unusable (not JSON, not an object, an unknown version) is dead-lettered
whole.

Two paths, like ingest's: msgspec decodes and checks a whole message in C (the common case: about
3x cheaper per event than going event by event); when anything in it fails, the slow path takes the
envelope with each event kept as raw bytes, then decodes each event on its own with the same
``EventIn`` type. Both paths build rows with ``_struct_row``, so they give the same rows. msgspec
recurses on nested JSON (a RecursionError near 1,000 levels, even when skipping a value): for such
a message the envelope is split by ``_envelope_scan``, which does not recurse.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType

from analytics_platform import event_format as ef
from streams import dead_letters as dl


class PoisonError(ValueError):
    """A message or event that can never be processed; it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.field = field


_CUSTOM_TYPE = re.compile(ef.CUSTOM_TYPE_PATTERN)
_Ts = Annotated[int, Meta(ge=ef.TIMESTAMP_MIN_MS, le=ef.TIMESTAMP_MAX_MS)]
_Int = Annotated[int, Meta(ge=0, le=ef.INT_MAX)]
_Pixels = Annotated[int, Meta(ge=ef.PIXELS_MIN, le=ef.PIXELS_MAX)]
_Dimension = Annotated[str, Meta(max_length=ef.DIMENSION_MAX_CHARS)]


class EventIn(msgspec.Struct, gc=False):
    """An event as the processor accepts it (the normalised form ingest writes, event_format.py).

    ``gc=False``: a decoded event cannot be part of a reference cycle, so the cyclic collector need
    not track the thousands decoded per second. ``type`` is checked in ``_struct_row``: a pattern
    here ran the regex on every event (40% of decoding), where a playback type needs a set lookup.
    """

    eventId: uuid.UUID
    type: str
    userId: Annotated[str, Meta(min_length=1, max_length=ef.USER_ID_MAX_CHARS)]
    timestamp: _Ts
    receivedAt: _Ts
    clientTimestamp: _Ts | UnsetType = UNSET
    sessionId: Annotated[str, Meta(max_length=ef.SESSION_ID_MAX_CHARS)] | None = None
    videoId: Annotated[str, Meta(max_length=ef.VIDEO_ID_MAX_CHARS)] | None = None
    positionMs: _Int | None = None
    bitrateKbps: _Int | None = None
    renditionWidth: _Pixels | None = None
    renditionHeight: _Pixels | None = None
    playerWidth: _Pixels | None = None
    playerHeight: _Pixels | None = None
    errorCode: Annotated[str, Meta(max_length=ef.ERROR_CODE_MAX_CHARS)] | None = None
    errorMessage: Annotated[str, Meta(max_length=ef.ERROR_MESSAGE_MAX_CHARS)] | None = None
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
    events: list[EventIn]
    replay: bool = False
    userId: str | UnsetType = UNSET
    receivedAt: int | UnsetType = UNSET


class _RawMessage(msgspec.Struct, gc=False):
    """The envelope of a message, its events kept as raw bytes (the slow path)."""

    v: Any = None
    events: list[msgspec.Raw] | None = None
    replay: Any = False
    userId: Any = None
    receivedAt: Any = None


_message_in = msgspec.json.Decoder(_MessageIn)
_raw_message = msgspec.json.Decoder(_RawMessage)
_event_in = msgspec.json.Decoder(EventIn)
_ERROR_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")

# An event's picture sizes: (renditionWidth, renditionHeight, playerWidth, playerHeight), each None
# when absent; None for an event with none of them (most events, and every older client's).
Picture = tuple[int | None, int | None, int | None, int | None] | None
# A user's validated events: (row, properties, picture) triples, in message order. The picture is
# not a column of ``events``: only the view summaries use it (README, "QoE scores").
UserRows = list[tuple[tuple[Any, ...], dict[str, Any] | None, Picture]]
RowGroups = list[tuple[str, UserRows]]


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
    if body.get("v") != ef.MESSAGE_VERSION:
        return None  # the ordinary path dead-letters an unknown version
    tick = body["tick"]
    if type(tick) is not int or not ef.TIMESTAMP_MIN_MS <= tick <= ef.TIMESTAMP_MAX_MS:
        raise PoisonError(dl.INVALID_TICK, "tick: not an integer in the stored time range", field="tick")
    return tick


def tick_message(wall_clock_ms: int) -> bytes:
    """The value of a tick message (produced by the stream workers only, never by ingest)."""
    return orjson.dumps({"v": ef.MESSAGE_VERSION, "tick": wall_clock_ms})


@dataclass(slots=True)
class MessageRows:
    """A message decoded: each user's valid rows, the dead letters of its bad events, replay or not."""

    groups: RowGroups
    dead_letters: list[dict[str, Any]]
    replay: bool = False  # an operator's replay of dead letters (event_format.py, "Replays")


def message_rows(value: bytes, *, key: bytes | None, partition: int, offset: int) -> MessageRows:
    """Decode and validate a message into per-user rows and the dead letters of its bad events.

    Raises PoisonError when the message as a whole is unusable. Users appear in order of their
    first event, each user's events in message order.
    """
    with contextlib.suppress(Exception):  # any surprise of the fast path: the slow path is the reference
        message = _message_in.decode(value)
        return MessageRows(_rows_fast(message, partition, offset), [], message.replay)
    envelope, raw_events = _envelope_events(value)
    by_user: dict[str, UserRows] = {}
    dead: list[dict[str, Any]] = []
    for raw in raw_events:
        try:
            event = _event_in.decode(raw)
            row = _struct_row(event, partition, offset)
        except Exception as exc:  # noqa: BLE001 -- whatever one event does, it alone is dead-lettered
            dead.append(_event_dead_letter(bytes(raw), exc, key, partition, offset))
            continue
        rows = by_user.get(event.userId)
        if rows is None:
            rows = by_user[event.userId] = []
        rows.append((row, event.properties, _picture(event)))
    return MessageRows(list(by_user.items()), dead, envelope.replay is True)


def event_row(event: dict[str, Any], *, partition: int, offset: int) -> tuple[Any, ...]:
    """One event (a dict as in a message) as its ``events`` row; raises on an invalid event.

    The rule both paths of ``message_rows`` apply, one event at a time (tests, tools).
    """
    return _struct_row(_event_in.decode(orjson.dumps(event)), partition, offset)


def _envelope_events(value: bytes) -> tuple[_RawMessage, list[Any]]:
    """The envelope and raw events of a message whose envelope is valid; raises PoisonError otherwise."""
    try:
        envelope = _raw_message.decode(value)
        events = envelope.events
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        raise PoisonError(dl.INVALID_MESSAGE, f"not a message of the events topic: {exc}") from None
    except msgspec.DecodeError as exc:
        raise PoisonError(dl.INVALID_JSON, f"not JSON: {exc}") from None
    except RecursionError:
        envelope, events = _envelope_scan(value)
    version = envelope.v
    if type(version) is not int or version not in (ef.BATCH_VERSION, ef.MESSAGE_VERSION):  # ``true`` is not 1
        raise PoisonError(dl.UNKNOWN_VERSION, f"unknown message version {version!r}"[:200], field="v")
    if events is None:
        raise PoisonError(dl.INVALID_MESSAGE, "events: missing", field="events")
    if version == ef.MESSAGE_VERSION:
        user, received_at = envelope.userId, envelope.receivedAt
        if type(user) is not str or not 0 < len(user) <= ef.USER_ID_MAX_CHARS:
            raise PoisonError(dl.INVALID_MESSAGE, "userId: not a string of 1-128 characters", field="userId")
        if type(received_at) is not int or not ef.TIMESTAMP_MIN_MS <= received_at <= ef.TIMESTAMP_MAX_MS:
            raise PoisonError(dl.INVALID_MESSAGE, "receivedAt: not in the stored time range", field="receivedAt")
    return envelope, events


def _event_dead_letter(raw: bytes, exc: Exception, key: bytes | None, partition: int, offset: int) -> dict[str, Any]:
    field: str | None = None
    if isinstance(exc, PoisonError):
        detail, field = exc.detail, exc.field
    elif isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        match = _ERROR_PATH.search(text)
        field = match.group("path") or None if match else None
        detail = text
    elif isinstance(exc, msgspec.DecodeError):
        detail = f"not JSON: {exc}"
    elif isinstance(exc, RecursionError):
        detail = "nested too deeply to decode"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    event_id = user_id = None
    try:  # best effort, for listing and replaying: orjson stops at 1,024 levels without recursing
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if type(body) is dict:
        event_id = body.get("eventId") if type(body.get("eventId")) is str else None
        user_id = body.get("userId") if type(body.get("userId")) is str else None
    return dl.dead_letter(
        dl.INVALID_EVENT,
        detail,
        payload=raw,
        key=key,
        partition=partition,
        offset=offset,
        field=field,
        event_id=event_id,
        user_id=user_id,
    )


def _rows_fast(message: _MessageIn, partition: int, offset: int) -> RowGroups:
    version = message.v
    if version == ef.MESSAGE_VERSION:
        user, received_at = message.userId, message.receivedAt
        if (
            type(user) is not str
            or not 0 < len(user) <= ef.USER_ID_MAX_CHARS
            or type(received_at) is not int
            or not ef.TIMESTAMP_MIN_MS <= received_at <= ef.TIMESTAMP_MAX_MS
        ):
            raise PoisonError(dl.INVALID_MESSAGE, "not a valid v1 message")  # the slow path says what exactly
    elif version != ef.BATCH_VERSION:
        raise PoisonError(dl.UNKNOWN_VERSION, "unknown version")
    by_user: dict[str, UserRows] = {}
    for event in message.events:
        rows = by_user.get(event.userId)
        if rows is None:
            rows = by_user[event.userId] = []
        rows.append((_struct_row(event, partition, offset), event.properties, _picture(event)))
    return list(by_user.items())


def _picture(event: EventIn) -> Picture:
    sizes = (event.renditionWidth, event.renditionHeight, event.playerWidth, event.playerHeight)
    return None if sizes == (None, None, None, None) else sizes


def _struct_row(event: EventIn, partition: int, offset: int) -> tuple[Any, ...]:
    """The ``events`` row of an event msgspec checked (``rows.EVENT_COLUMNS`` order).

    Only the cross-field rules remain to check: everything ClickHouse could refuse is refused
    before (one bad row would otherwise fail its whole INSERT).
    """
    etype = event.type
    session = event.sessionId or ""
    video = event.videoId or ""
    if etype in ef.PLAYBACK_TYPES:
        if not session:
            raise PoisonError(dl.INVALID_EVENT, f"sessionId: required for {etype}", field="sessionId")
        if not video:
            raise PoisonError(dl.INVALID_EVENT, f"videoId: required for {etype}", field="videoId")
    elif not _CUSTOM_TYPE.match(etype):
        raise PoisonError(
            dl.INVALID_EVENT, f"type: {etype[:80]!r} is neither a playback type nor a custom type", field="type"
        )
    ts = event.timestamp
    client_ts = event.clientTimestamp
    properties = event.properties
    if properties:
        try:
            properties_text = orjson.dumps(properties).decode()
        except orjson.JSONEncodeError as exc:  # nested beyond orjson's limit, an integer beyond 64 bits
            raise PoisonError(dl.INVALID_EVENT, f"properties: cannot be stored: {exc}", field="properties") from None
    else:
        properties_text = ""
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
        properties_text,
        False,
        partition,
        offset,
    )


# ``_envelope_scan``: JSON strings (with escapes) and the structural characters, nothing else.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]')
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")
_QUOTE, _COMMA, _COLON = ord('"'), ord(","), ord(":")


def _children(buf: bytes, start: int) -> list[tuple[int, int]]:
    """Byte ranges of the direct children of the array or object that opens at ``buf[start]``.

    Iterative (a depth counter, not recursion), so any nesting is split in linear time. Each
    child is parsed on its own afterwards, which is where malformed JSON is refused.
    """
    depth = 0
    spans: list[tuple[int, int]] = []
    item = start + 1
    for match in _TOKEN.finditer(buf, start):
        char = buf[match.start()]
        if char == _QUOTE:
            continue
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth -= 1
            if depth == 0:
                if buf[item : match.start()].strip():
                    spans.append((item, match.start()))
                return spans
        elif char == _COMMA and depth == 1:
            spans.append((item, match.start()))
            item = match.end()
    raise PoisonError(dl.INVALID_JSON, "not JSON: unbalanced brackets")


_MEMBER_KEY = re.compile(rb'\s*("[^"\\]*(?:\\.[^"\\]*)*")\s*:')


def _envelope_scan(value: bytes) -> tuple[_RawMessage, list[Any] | None]:
    """The envelope and raw events of a message too deeply nested for msgspec (see module doc)."""
    start = len(value) - len(value.lstrip())
    if value[start : start + 1] != b"{":
        raise PoisonError(dl.INVALID_MESSAGE, "not a JSON object")
    envelope = _RawMessage()
    events: list[Any] | None = None
    for begin, end in _children(value, start):
        member = value[begin:end]
        key = _MEMBER_KEY.match(member)
        if key is None:
            raise PoisonError(dl.INVALID_JSON, "not JSON: an object member without a key")
        name = orjson.loads(key.group(1))
        raw_value = member[key.end() :].strip()
        if name == "events":
            if raw_value[:1] != b"[":
                raise PoisonError(dl.INVALID_MESSAGE, "events: not a list", field="events")
            events = [raw_value[b:e].strip() for b, e in _children(raw_value, 0)]
        elif name in ("v", "userId", "receivedAt", "replay"):
            try:
                setattr(envelope, name, orjson.loads(raw_value))
            except orjson.JSONDecodeError as exc:
                raise PoisonError(dl.INVALID_MESSAGE, f"{name}: {exc}", field=name) from None
    return envelope, events
