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
from typing import Annotated, Any, Final

import msgspec
from msgspec import UNSET, Meta, UnsetType

from analytics_platform import event_format

MAX_EVENTS_PER_BATCH: Final = 1000
MAX_PROPERTIES: Final = 64
# Upper bound for epoch-millisecond timestamps (year 3000): a larger number is a unit mistake
# (microseconds or nanoseconds), not a time.
MAX_EPOCH_MS: Final = 32_503_680_000_000

UserIdStr = Annotated[str, Meta(min_length=1, max_length=128)]
SessionIdStr = Annotated[str, Meta(min_length=1, max_length=128)]
VideoIdStr = Annotated[str, Meta(min_length=1, max_length=256)]
# API.md leaves these unbounded; the bounds below only refuse values no player sends, so that a
# single event cannot carry megabytes in a dimension column.
DimensionStr = Annotated[str, Meta(max_length=256)]
ErrorCodeStr = Annotated[str, Meta(max_length=256)]
ErrorMessageStr = Annotated[str, Meta(max_length=4096)]
PropertyKey = Annotated[str, Meta(min_length=1, max_length=128)]
EpochMs = Annotated[int, Meta(ge=0, le=MAX_EPOCH_MS)]
Rfc3339 = Annotated[datetime, Meta(tz=True)]
NonNegativeInt = Annotated[int, Meta(ge=0, le=2**53)]
EventType = Annotated[str, Meta(pattern=event_format.CUSTOM_TYPE_PATTERN)]


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
    error_code: ErrorCodeStr | UnsetType = UNSET
    error_message: ErrorMessageStr | UnsetType = UNSET
    fatal: bool | UnsetType = UNSET
    device: DimensionStr | UnsetType = UNSET
    os: DimensionStr | UnsetType = UNSET
    browser: DimensionStr | UnsetType = UNSET
    country: DimensionStr | UnsetType = UNSET
    cdn: DimensionStr | UnsetType = UNSET
    player: DimensionStr | UnsetType = UNSET
    properties: Annotated[dict[PropertyKey, Any], Meta(max_length=MAX_PROPERTIES)] | UnsetType = UNSET
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
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`")


def epoch_ms(value: int | datetime) -> int:
    if isinstance(value, int):
        return value
    return (value - EPOCH) // ONE_MS


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
    field = _field_of(path)
    last = (field or "").rsplit(".", 1)[-1]
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
    elif field == "properties" and "of length <=" in detail:
        code = "too_many_properties"
        detail = f"properties holds at most {MAX_PROPERTIES} keys"
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


def batch_decode(body: bytes) -> DecodedBatch:
    """Decode and structurally validate a request body.

    Raises ``BodyError`` when nothing in the body is usable and ``TooManyEvents`` above the limit.
    Type-dependent rules (required fields of playback types) and duplicates are left to the caller.
    """
    _check_utf8(body)
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.DecodeError:  # ValidationError included
        return _batch_decode_slow(body)
    if len(batch.events) > MAX_EVENTS_PER_BATCH:
        raise TooManyEvents(len(batch.events))
    sent_at = None if batch.sentAt is UNSET else epoch_ms(batch.sentAt)
    return DecodedBatch(sent_at, list(enumerate(batch.events)), [])


def _batch_decode_slow(body: bytes) -> DecodedBatch:
    try:
        raw = _raw_batch_decoder.decode(body)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        raise BodyError(_body_validation_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise BodyError(EventError(None, None, "malformed_json", f"the body is not valid JSON: {exc}")) from None
    if len(raw.events) > MAX_EVENTS_PER_BATCH:
        raise TooManyEvents(len(raw.events))
    sent_at = None if raw.sentAt is UNSET else epoch_ms(raw.sentAt)
    events: list[tuple[int, Event]] = []
    errors: list[EventError] = []
    for index, raw_event in enumerate(raw.events):
        try:
            events.append((index, _event_decoder.decode(raw_event)))
        except msgspec.ValidationError as exc:
            errors.append(_error_from_validation(index, exc))
    return DecodedBatch(sent_at, events, errors)
