"""The wire format of ``POST /events`` and its validation (API.md, ``POST /events``).

Why msgspec and two paths: the endpoint's budget is about 10 CPU-microseconds per event, which
rules out per-field Python validation. Almost every batch is valid, so the whole body is first
decoded in one C-level pass into typed ``Event`` structs (types, lengths, UUIDs, RFC 3339, the
type pattern are all checked by msgspec). Only when that fails is the body decoded again, event by
event, so each bad event gets its own ``{"index", "field", "code", "message"}`` error and the rest
are still accepted.

Unknown fields, at the top level or in an event, are accepted and dropped (forward-compatible
clients can send fields this server does not know yet); they are not forwarded to Kafka.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Final, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from analytics_platform import event_format

MAX_EVENTS_PER_BATCH: Final = 1000

# Every bound below is event_format's (the one place they are written); msgspec checks them in C.
UserIdStr = Annotated[str, Meta(min_length=1, max_length=event_format.USER_ID_MAX_CHARS)]
SessionIdStr = Annotated[str, Meta(min_length=1, max_length=event_format.SESSION_ID_MAX_CHARS)]
VideoIdStr = Annotated[str, Meta(min_length=1, max_length=event_format.VIDEO_ID_MAX_CHARS)]
DimensionStr = Annotated[str, Meta(max_length=event_format.DIMENSION_MAX_CHARS)]
ErrorCodeStr = Annotated[str, Meta(max_length=event_format.ERROR_CODE_MAX_CHARS)]
ErrorMessageStr = Annotated[str, Meta(max_length=event_format.ERROR_MESSAGE_MAX_CHARS)]
# A raw client time (and sentAt) must be a stored time: msgspec checks the epoch-ms form; the RFC
# 3339 one (years 1-9999: msgspec has no bounds for datetimes) is checked once converted, by
# ``_sent_at_ms`` and ``services.events_prepare``.
EpochMs = Annotated[int, Meta(ge=event_format.TIMESTAMP_MIN_MS, le=event_format.TIMESTAMP_MAX_MS)]
Rfc3339 = Annotated[datetime, Meta(tz=True)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=event_format.INT_MAX)]
Pixels = Annotated[int, Meta(ge=event_format.PIXELS_MIN, le=event_format.PIXELS_MAX)]
# ``properties``: every bound but the encoded size is in the type, checked by msgspec in C while it
# decodes (nothing deeper than the limit is ever decoded). Integers within ±INT_MAX: the stream
# worker encodes properties with orjson, which refuses integers over 64 bits, and the clients are
# JavaScript. The encoded size is ``properties_size_error``'s.
PropertyKey = Annotated[str, Meta(min_length=1, max_length=event_format.PROPERTY_KEY_MAX_CHARS)]
PropertyStr = Annotated[str, Meta(max_length=event_format.PROPERTY_STRING_MAX_CHARS)]
PropertyInt = Annotated[int, Meta(ge=-event_format.INT_MAX, le=event_format.INT_MAX)]


def _property_value(levels: int) -> Any:
    """The type of a property value holding at most ``levels`` levels of objects and arrays."""
    value: Any = Union[PropertyStr, PropertyInt, float, bool, None]  # noqa: UP007 -- built at run time
    for _ in range(levels):
        value = Union[PropertyStr, PropertyInt, float, bool, None, list[value], dict[PropertyKey, value]]  # noqa: UP007
    return value


if TYPE_CHECKING:
    Properties = dict[str, Any]
else:
    # The properties object is level 1: its values hold the other PROPERTIES_MAX_DEPTH - 1.
    Properties = Annotated[
        dict[PropertyKey, _property_value(event_format.PROPERTIES_MAX_DEPTH - 1)],
        Meta(max_length=event_format.PROPERTIES_MAX_KEYS),
    ]
EventType = Annotated[str, Meta(pattern=event_format.CUSTOM_TYPE_PATTERN)]


def _token(tokens: tuple[str, ...]) -> Any:
    return Annotated[str, Meta(pattern="^(?:" + "|".join(tokens) + ")$")]


# CMCD (CTA-5004): the keys, types and bounds are event_format's.
CmcdInt = NonNegativeInt
CmcdId = Annotated[str, Meta(max_length=event_format.CMCD_ID_MAX_CHARS)]
CmcdNor = Annotated[str, Meta(max_length=event_format.CMCD_NOR_MAX_CHARS)]
CmcdNrr = Annotated[str, Meta(pattern=event_format.CMCD_NRR_PATTERN, max_length=2 * len(str(event_format.INT_MAX)) + 1)]
CmcdRate = Annotated[float, Meta(ge=0)]
CmcdVersion = Annotated[int, Meta(ge=1, le=event_format.INT_MAX)]
if TYPE_CHECKING:
    CmcdObjectType = str
    CmcdStreamingFormat = str
    CmcdStreamType = str
else:
    CmcdObjectType = _token(event_format.CMCD_OBJECT_TYPES)
    CmcdStreamingFormat = _token(event_format.CMCD_STREAMING_FORMATS)
    CmcdStreamType = _token(event_format.CMCD_STREAM_TYPES)


class Cmcd(msgspec.Struct, omit_defaults=True, gc=False):
    """The CTA-5004 keys of an event's ``cmcd`` object; other keys are dropped."""

    br: CmcdInt | UnsetType = UNSET
    bl: CmcdInt | UnsetType = UNSET
    bs: bool | UnsetType = UNSET
    cid: CmcdId | UnsetType = UNSET
    d: CmcdInt | UnsetType = UNSET
    dl: CmcdInt | UnsetType = UNSET
    mtp: CmcdInt | UnsetType = UNSET
    nor: CmcdNor | UnsetType = UNSET
    nrr: CmcdNrr | UnsetType = UNSET
    ot: CmcdObjectType | UnsetType = UNSET
    pr: CmcdRate | UnsetType = UNSET
    rtp: CmcdInt | UnsetType = UNSET
    sf: CmcdStreamingFormat | UnsetType = UNSET
    sid: CmcdId | UnsetType = UNSET
    st: CmcdStreamType | UnsetType = UNSET
    su: bool | UnsetType = UNSET
    tb: CmcdInt | UnsetType = UNSET
    v: CmcdVersion | UnsetType = UNSET


_CMCD_CHOICES = {
    "ot": event_format.CMCD_OBJECT_TYPES,
    "sf": event_format.CMCD_STREAMING_FORMATS,
    "st": event_format.CMCD_STREAM_TYPES,
}


class Event(msgspec.Struct, rename="camel", gc=False):
    """One event as sent by a client and, after ``event_normalise``, as forwarded to Kafka.

    ``client_timestamp`` and ``received_at`` are set by the server (any client value is
    overwritten); ``timestamp`` becomes epoch milliseconds after the clock-skew correction.
    """

    event_id: uuid.UUID
    type: EventType
    user_id: UserIdStr
    timestamp: EpochMs | Rfc3339
    session_id: SessionIdStr | UnsetType = UNSET
    video_id: VideoIdStr | UnsetType = UNSET
    position_ms: NonNegativeInt | UnsetType = UNSET
    bitrate_kbps: NonNegativeInt | UnsetType = UNSET
    rendition_width: Pixels | UnsetType = UNSET
    rendition_height: Pixels | UnsetType = UNSET
    player_width: Pixels | UnsetType = UNSET
    player_height: Pixels | UnsetType = UNSET
    error_code: ErrorCodeStr | UnsetType = UNSET
    error_message: ErrorMessageStr | UnsetType = UNSET
    fatal: bool | UnsetType = UNSET
    device: DimensionStr | UnsetType = UNSET
    os: DimensionStr | UnsetType = UNSET
    browser: DimensionStr | UnsetType = UNSET
    country: DimensionStr | UnsetType = UNSET
    cdn: DimensionStr | UnsetType = UNSET
    player: DimensionStr | UnsetType = UNSET
    properties: Properties | UnsetType = UNSET
    cmcd: Cmcd | UnsetType = UNSET
    client_timestamp: int | UnsetType = UNSET
    received_at: int | UnsetType = UNSET


class Batch(msgspec.Struct, gc=False):
    """The fast path: a whole valid body in one decode."""

    events: list[Event]
    sentAt: Rfc3339 | EpochMs | UnsetType = UNSET  # wire name


class RawBatch(msgspec.Struct, gc=False):
    """The slow path: the envelope only, each event kept as raw JSON to validate on its own."""

    events: list[msgspec.Raw]
    sentAt: Rfc3339 | EpochMs | UnsetType = UNSET  # wire name


@dataclass(frozen=True, slots=True)
class EventError:
    """Why one event (``index``) or the body itself (``index`` None) was refused."""

    index: int | None
    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "code": self.code, "message": self.message}


class BodyError(Exception):
    """The body as a whole is unusable (not JSON, not UTF-8, not a batch): nothing is accepted."""

    def __init__(self, error: EventError) -> None:
        super().__init__(error.message)
        self.error = error


class TooManyEvents(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(f"a batch holds at most {MAX_EVENTS_PER_BATCH} events, got {count}")
        self.count = count


@dataclass(slots=True)
class DecodedBatch:
    sent_at_ms: int | None
    events: list[tuple[int, Event]]  # (index in the request, event) of structurally valid events
    errors: list[EventError]


_batch_decoder = msgspec.json.Decoder(Batch)
_raw_batch_decoder = msgspec.json.Decoder(RawBatch)
_event_decoder = msgspec.json.Decoder(Event)
message_encoder = msgspec.json.Encoder()

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_KEY_PATH = re.compile(r" - at `key` in `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


def epoch_ms(value: int | datetime) -> int:
    if isinstance(value, int):
        return value
    return (value - EPOCH) // ONE_MS


def iso_ms(ms: int) -> str:
    """``ms`` (epoch milliseconds) as RFC 3339 UTC, for messages."""
    return (EPOCH + ms * ONE_MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stored_range_error(index: int | None, field: str) -> EventError:
    """A raw client time (``timestamp`` or ``sentAt``) outside the times the event store can hold."""
    low, high = event_format.TIMESTAMP_MIN_MS, event_format.TIMESTAMP_MAX_MS
    return EventError(
        index,
        field,
        "invalid_timestamp",
        f"{field} must lie between {iso_ms(low)} and {iso_ms(high)} (epoch milliseconds {low} to {high})",
    )


def _field_of(path: str) -> str | None:
    path = path.lstrip(".")
    return path or None


def _error_from_validation(index: int | None, exc: msgspec.ValidationError) -> EventError:
    """Turn msgspec's message (``Expected `str` of length <= 128 - at `$.userId```) into a code."""
    text = str(exc)
    match = _PATH.search(text)
    path = match.group("path") if match else ""
    detail = text[: match.start()] if match else text
    missing = _MISSING.match(detail)
    if missing:
        name = missing.group("name")
        prefix = _field_of(path)
        field = f"{prefix}.{name}" if prefix else name
        return EventError(index, field, "required", f"{field} is required")
    key_match = _KEY_PATH.search(text) if match is None else None
    if key_match is not None:  # the error is about a key: "... - at `key` in `$.properties`"
        path, detail = key_match.group("path"), text[: key_match.start()]
    field = _field_of(path)
    if field is not None and (field == "properties" or field.startswith(("properties.", "properties["))):
        nested = field != "properties"
        property_error = _properties_error(detail, key=key_match is not None, nested=nested)
        if property_error is not None:
            return EventError(index, "properties", *property_error)
    last = (field or "").rsplit(".", 1)[-1]
    if last in {"timestamp", "sentAt"} and detail.startswith("Expected `int` "):
        return stored_range_error(index, last)  # negative, or past the store's range (a unit mistake)
    if last in {"timestamp", "sentAt"} and not detail.startswith("Expected `int | datetime`, got"):
        code = "invalid_timestamp"
        detail = f"{detail}: expected an RFC 3339 time with an offset, or epoch milliseconds"
    elif detail.startswith("Invalid UUID"):
        code = "invalid_uuid"
    elif "matching regex" in detail and last == "type":
        code = "unknown_type"
        detail = (
            f"type is neither a playback type nor a custom interaction type matching {event_format.CUSTOM_TYPE_PATTERN}"
        )
    elif "matching regex" in detail and field is not None and field.startswith("cmcd."):
        code = "invalid_value"
        choices = _CMCD_CHOICES.get(last)
        detail = f"{field} must be one of {', '.join(choices)}" if choices else f"{field}: {detail}"
    elif detail.startswith("Number out of range") and field is not None and field.startswith("cmcd."):
        code = "out_of_range"  # pr beyond a double
    elif "of length <=" in detail:
        code = "too_long"
    elif "of length >=" in detail:
        code = "too_short"
    elif detail.startswith("Expected `") and ("` >= " in detail or "` <= " in detail):
        code = "out_of_range"
    elif detail.startswith("Expected `"):
        code = "invalid_type"
    else:
        code = "invalid"
    return EventError(index, field, code, detail)


# --- properties -----------------------------------------------------------------------------
_PROPERTIES_DEEP = (
    "properties_too_deep",
    f"properties nest at most {event_format.PROPERTIES_MAX_DEPTH} levels of objects and arrays",
)


def _properties_error(detail: str, *, key: bool, nested: bool) -> tuple[str, str] | None:
    """The code and message of msgspec's ``detail`` about ``properties``, or None (not a bound)."""
    if key:
        if "of length >=" in detail:
            return "too_short", "a properties key must not be empty"
        return "properties_too_large", f"a properties key is at most {event_format.PROPERTY_KEY_MAX_CHARS} characters"
    if not nested:
        if "of length <=" in detail:
            return "properties_too_large", f"properties holds at most {event_format.PROPERTIES_MAX_KEYS} keys"
        return None  # not an object: invalid_type
    if detail.endswith(("got `array`", "got `object`")):
        return _PROPERTIES_DEEP  # a container where only scalars are left
    if "of length <=" in detail:
        return (
            "properties_too_large",
            f"a properties string is at most {event_format.PROPERTY_STRING_MAX_CHARS} characters",
        )
    if detail.startswith("Expected `int`"):
        return "properties_too_large", f"a properties integer must lie within ±{event_format.INT_MAX}"
    return "properties_too_large", detail  # "Number out of range": beyond a double


def properties_size_error(properties: dict[str, Any]) -> EventError | None:
    """The one bound of ``properties`` the decoder cannot check: the encoded size (index None).

    ``services.events_encode`` calls it only for events whose user's events together encode to
    more than the limit: below that, no event's properties (a part of that encoding) can exceed it.
    """
    limit = event_format.PROPERTIES_MAX_BYTES
    if len(message_encoder.encode(properties)) > limit:
        return EventError(
            None, "properties", "properties_too_large", f"properties encode to at most {limit} bytes of JSON"
        )
    return None


# --- bodies nested too deeply for the decoder -------------------------------------------------
# msgspec refuses input nested deeper than the interpreter's recursion limit minus the caller's
# stack (about 900 levels here) with RecursionError, and skipping a value (a Raw, an unknown field)
# recurses the same way. Such a body is split by a linear scan instead: the events array's elements
# are found by bracket depth; an element nested deeper than _SCAN_MAX_DEPTH is rejected without
# being decoded (its inside is not parsed: it is refused whatever it holds) and replaced by null;
# the rest of the body (envelope and other events) is then decoded as usual, so its syntax is
# still checked. Depth outside the events array makes the whole body unusable (400).
_SCAN_MAX_DEPTH = 256  # levels within one event: far below the decoder's limit, far above any valid event
# The scan's cost is bounded: a body that is both too deep for the decoder and made of more runs
# than this (about 0.2 CPU-s of scanning) is refused whole. A batch of 1000 ordinary events is
# about 10,000 runs (a run of strings and scalars counts once).
_SCAN_MAX_TOKENS = 300_000
_STRING = rb'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)'  # possessive and always matching: linear, even unterminated
# A run of anything but brackets (strings, scalars, commas, colons), or a run of brackets: the scan
# takes one Python step per run, so a long run of strings or numbers costs one regex match.
_SCAN_TOKEN = re.compile(rb"(?s)(?:[^\"\[\]{}]++|" + _STRING + rb")++|[\[{]++|[\]}]++")
# In a run: the text up to and including the next comma outside strings (or up to the end).
_SCAN_COMMA = re.compile(rb'(?s)(?:[^",]++|' + _STRING + rb")*+(?:,|\Z)")
_SCAN_KEY = re.compile(rb"(?s)" + _STRING + rb"|:")
_EVENTS_KEY = b'"events"'
_OPEN = frozenset(b"[{")
_CLOSE = frozenset(b"]}")
_FIELDS = frozenset(field.encode_name for field in msgspec.structs.fields(Event))


def _too_deep_body() -> BodyError:
    return BodyError(
        EventError(
            None,
            None,
            "too_deep",
            "the body nests objects and arrays too deeply to be decoded "
            f"(over {_SCAN_MAX_DEPTH} levels outside an event, or too large as well)",
        )
    )


def _deep_element_error(index: int, key: bytes | None) -> EventError:
    try:
        name = msgspec.json.decode(key) if key is not None else None
    except msgspec.DecodeError:  # an unterminated string: the body is refused later anyway
        name = None
    if name == "properties":
        return EventError(
            index,
            "properties",
            "properties_too_deep",
            f"properties nest at most {event_format.PROPERTIES_MAX_DEPTH} levels of objects and arrays",
        )
    field = name if name in _FIELDS else None
    return EventError(
        index, field, "too_deep", f"the event nests objects and arrays over {_SCAN_MAX_DEPTH} levels deep"
    )


def _key_before(body: bytes, start: int, end: int) -> bytes | None:
    """The key a value opened at ``end`` belongs to: a run ``... "key":`` in ``body[start:end]``."""
    key = last = None
    for match in _SCAN_KEY.finditer(body, start, end):
        token = match.group()
        if token == b":":
            key = last
        else:
            last, key = token, None
    return key


def _deep_events_split(body: bytes) -> tuple[bytes, dict[int, EventError]]:
    """``body`` with every too-deep event replaced by null, and those events' errors by index."""
    depth = 0
    top_key: bytes | None = None
    events_open = events_close = -1
    in_events = False
    starts: list[int] = []  # of the events array's elements, and their ends
    ends: list[int] = []
    flat: tuple[int, int] | None = None  # the span of the previous token when it was not brackets
    key_span: tuple[int, int] | None = None  # where the key of the current event's deep value is
    element_deep = False
    deep: dict[int, EventError] = {}
    for count, match in enumerate(_SCAN_TOKEN.finditer(body)):
        if count > _SCAN_MAX_TOKENS:
            raise _too_deep_body()
        position, end = match.span()
        first = body[position]
        if first not in _OPEN and first not in _CLOSE:  # a run without brackets
            if in_events and depth == 2:  # element boundaries
                for comma in _SCAN_COMMA.finditer(body, position, end):
                    if comma.end() > comma.start() and body[comma.end() - 1] == 0x2C:
                        ends.append(comma.end() - 1)
                        if len(ends) > MAX_EVENTS_PER_BATCH:
                            raise TooManyEvents(len(ends) + 1)
                        starts.append(comma.end())
                        key_span, element_deep = None, False
            flat = (position, end)
            continue
        size = end - position
        if first in _OPEN:
            for offset in range(size):
                if depth >= 3:  # inside an event or another value: only the depth matters
                    if depth == 3 and in_events:
                        key_span = flat if offset == 0 else None
                    depth += size - offset
                    break
                char = body[position + offset]
                if depth == 0:
                    if char != 0x7B:
                        raise _too_deep_body()
                elif depth == 1:
                    top_key = _key_before(body, *flat) if flat is not None and offset == 0 else None
                    if top_key == _EVENTS_KEY:
                        if char != 0x5B or events_open >= 0:
                            raise _too_deep_body()
                        events_open, in_events = position + offset, True
                        starts.append(position + offset + 1)
                depth += 1
            if in_events and depth - 2 > _SCAN_MAX_DEPTH and not element_deep:
                element_deep = True
                key = _key_before(body, *key_span) if key_span is not None else None
                deep[len(starts) - 1] = _deep_element_error(len(starts) - 1, key)
            elif not in_events and depth > _SCAN_MAX_DEPTH:
                raise _too_deep_body()
        else:
            offset = 0
            while offset < size:
                if depth > 3:  # down to an event's own level at once
                    step = min(depth - 3, size - offset)
                    depth -= step
                    offset += step
                    continue
                depth -= 1
                if depth < 0:
                    raise _too_deep_body()
                if depth == 1 and in_events:
                    ends.append(position + offset)
                    events_close, in_events = position + offset, False
                offset += 1
        flat = None
    if depth != 0 or events_open < 0 or events_close < 0:
        raise _too_deep_body()
    pieces = [
        b"null" if index in deep else body[start:end]
        for index, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]
    if len(pieces) == 1 and not pieces[0].strip():
        pieces = []  # "events": []
    return body[: events_open + 1] + b",".join(pieces) + body[events_close:], deep


def _body_validation_error(exc: msgspec.ValidationError) -> EventError:
    error = _error_from_validation(None, exc)
    if error.field is None:
        return EventError(None, None, "invalid_batch", 'the body must be a JSON object {"events": [...]}')
    if error.field == "events":
        return EventError(None, "events", error.code, f"events must be an array of event objects ({error.message})")
    return error


def _check_utf8(body: bytes) -> None:
    if body.isascii():
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(
            EventError(None, None, "invalid_encoding", f"the body is not valid UTF-8 (byte {exc.start})")
        ) from None


def _sent_at_ms(value: int | datetime | UnsetType) -> int | None:
    """sentAt in epoch ms; a time the store cannot hold makes the body unusable (400), like a
    sentAt that is not a time at all: every event's correction would depend on it."""
    if value is UNSET:
        return None
    ms = epoch_ms(value)
    if not event_format.TIMESTAMP_MIN_MS <= ms <= event_format.TIMESTAMP_MAX_MS:
        raise BodyError(stored_range_error(None, "sentAt"))
    return ms


def batch_decode(body: bytes) -> DecodedBatch:
    """Decode and structurally validate a request body.

    Raises ``BodyError`` when nothing in the body is usable and ``TooManyEvents`` above the limit.
    Type-dependent rules (required fields of playback types), properties bounds, the time window
    and duplicates are left to the caller.
    """
    _check_utf8(body)
    try:
        batch = _batch_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included
        return _batch_decode_slow(body)
    if len(batch.events) > MAX_EVENTS_PER_BATCH:
        raise TooManyEvents(len(batch.events))
    return DecodedBatch(_sent_at_ms(batch.sentAt), list(enumerate(batch.events)), [])


# --- lone surrogates --------------------------------------------------------------------------
# JavaScript strings are UTF-16: a player that cuts a title at N code units can split an emoji's
# surrogate pair, and JSON.stringify then writes the half as an escape (``"\ud83d"``). That is valid
# JSON syntax but no Unicode text, and msgspec refuses the whole body for it. Like a browser's
# TextEncoder, ingest replaces each unpaired surrogate escape with U+FFFD (the replacement
# character) and decodes again, so the event is kept, not the whole batch refused.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]")
# Escaped backslashes (consumed in pairs, so ``\\\\ud800`` is no escape) and surrogate escapes.
_SURROGATE_SCAN = re.compile(rb"\\\\|\\u[dD]([89a-fA-F])[0-9a-fA-F]{2}")
_SURROGATE_SCAN_MAX = 100_000  # matches scanned at most (a body of backslash pairs: refused as it is)
_REPLACEMENT = b"\\ufffd"


def lone_surrogates_replace(body: bytes) -> bytes | None:
    """``body`` with every unpaired surrogate escape replaced by U+FFFD; None when it has none."""
    if _SURROGATE_HINT.search(body) is None:
        return None
    pieces: list[bytes] = []
    last = 0
    high: tuple[int, int] | None = None  # a high surrogate escape waiting for its low half
    for count, match in enumerate(_SURROGATE_SCAN.finditer(body)):
        if count > _SURROGATE_SCAN_MAX:
            return None
        nibble = match.group(1)
        low = nibble is not None and nibble in b"cdefCDEF"
        if high is not None:
            if low and match.start() == high[1]:  # a proper pair
                high = None
                continue
            pieces += (body[last : high[0]], _REPLACEMENT)
            last, high = high[1], None
        if nibble is None:
            continue
        if low:
            pieces += (body[last : match.start()], _REPLACEMENT)
            last = match.end()
        else:
            high = match.span()
    if high is not None:
        pieces += (body[last : high[0]], _REPLACEMENT)
        last = high[1]
    if not pieces:
        return None
    pieces.append(body[last:])
    return b"".join(pieces)


def _batch_decode_slow(body: bytes) -> DecodedBatch:
    deep: dict[int, EventError] = {}
    try:
        try:
            raw = _raw_batch_decoder.decode(body)
        except msgspec.ValidationError:
            raise
        except msgspec.DecodeError:
            repaired = lone_surrogates_replace(body)
            if repaired is None:
                raise
            return batch_decode(repaired)
        except RecursionError:
            body, deep = _deep_events_split(body)
            raw = _raw_batch_decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        raise BodyError(_body_validation_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(EventError(None, None, "malformed_json", f"the body is not valid JSON: {exc}")) from None
    except RecursionError:  # deep outside the events array, past what the scan recognises
        raise _too_deep_body() from None
    if len(raw.events) > MAX_EVENTS_PER_BATCH:
        raise TooManyEvents(len(raw.events))
    sent_at = _sent_at_ms(raw.sentAt)
    events: list[tuple[int, Event]] = []
    errors: list[EventError] = []
    for index, raw_event in enumerate(raw.events):
        error = deep.get(index)
        if error is not None:
            errors.append(error)
            continue
        try:
            events.append((index, _event_decoder.decode(raw_event)))
        except msgspec.ValidationError as exc:
            errors.append(_error_from_validation(index, exc))
        except RecursionError:
            errors.append(_deep_element_error(index, None))
    return DecodedBatch(sent_at, events, errors)
