"""``event_batch_ingest``: from a request body to events acknowledged by Kafka.

The steps, in order: content checks (type, encoding, size), gzip, decoding and per-event
validation (``ingest.schema``), type-dependent rules, in-batch deduplication on ``eventId``,
normalisation (clock-skew correction, server receive time), grouping per ``userId`` and encoding
(each event once, on the request's thread), then the hand-over to the producer, which coalesces
the events of concurrent requests per partition into v2 batch messages
(``analytics_platform.event_format``), and the wait for the broker's acknowledgement. Only then is
anything reported accepted.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from msgspec import UNSET

from analytics_platform import event_format
from analytics_platform.errors import ApplicationError
from ingest import instrumentation, schema
from ingest.coalescer import BATCH_OVERHEAD, Part
from ingest.producer import DeliveryFailed, producer_get
from ingest.schema import Event, EventError

_PLAYBACK_TYPES = event_format.PLAYBACK_TYPES
_encode = schema.message_encoder.encode


@dataclass(slots=True)
class IngestResult:
    accepted: int
    rejected: int
    errors: list[EventError] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected, "errors": [e.as_dict() for e in self.errors]}


def _invalid_body(error: EventError, *, rejected: int = 0) -> ApplicationError:
    """400 with both shapes: ``error`` (like every other API error) and the batch result fields."""
    return ApplicationError(
        error.message,
        code=error.code,
        field=error.field,
        status_code=400,
        extra={"accepted": 0, "rejected": rejected, "errors": [error.as_dict()]},
    )


def content_type_check(*, content_type: str) -> None:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise ApplicationError(
            f"Content-Type must be application/json, got {content_type or 'nothing'!r}",
            code="unsupported_media_type",
            status_code=415,
        )


# Input fed to zlib per call, from a memoryview (no copy): what a finished member leaves in
# ``unused_data`` (a copy) is at most one piece, so a member costs about its own size, not the rest of
# the body (linear in the body's size). A member's pieces start small and double, so that many tiny
# members copy little and a large one takes few calls.
_GZIP_FIRST_PIECE = 1024
_GZIP_MAX_PIECE = 256 * 1024


def _invalid_gzip(detail: str) -> ApplicationError:
    return _invalid_body(EventError(None, None, "invalid_gzip", f"the body is not valid gzip: {detail}"))


def body_decompress(*, body: bytes, content_encoding: str) -> bytes:
    """Undo ``Content-Encoding: gzip`` without ever holding more than the size limit in memory.

    A gzip body may hold several members (concatenated streams); at most
    ``INGEST_GZIP_MAX_MEMBERS`` are accepted, and the work is linear in the body's size.
    """
    encoding = content_encoding.strip().lower()
    limit = settings.INGEST_MAX_BODY_BYTES
    if encoding in {"", "identity"}:
        return body
    if encoding not in {"gzip", "x-gzip"}:
        raise ApplicationError(
            f"Content-Encoding {content_encoding!r} is not supported (use gzip or none)",
            code="unsupported_encoding",
            status_code=415,
        )
    max_members = settings.INGEST_GZIP_MAX_MEMBERS
    view = memoryview(body)
    end = len(body)
    position = 0
    members = 0
    out: list[bytes] = []
    size = 0
    try:
        while True:  # one member per turn
            members += 1
            if members > max_members:
                raise _invalid_gzip(f"more than {max_members} gzip members")
            inflater = zlib.decompressobj(wbits=31)
            piece_size = _GZIP_FIRST_PIECE
            while not inflater.eof:
                if position >= end:
                    raise _invalid_gzip("truncated gzip stream")
                piece = view[position : position + piece_size]
                piece_size = min(piece_size * 2, _GZIP_MAX_PIECE)
                # At most one byte over the limit: a gzip bomb is never inflated further.
                chunk = inflater.decompress(piece, limit + 1 - size)
                size += len(chunk)
                if size > limit:
                    raise body_too_large(limit)
                out.append(chunk)
                # Below the output cap zlib consumed the whole piece but what follows the member.
                position += len(piece) - len(inflater.unused_data)
            if position >= end:
                break
    except zlib.error as exc:
        raise _invalid_gzip(str(exc)) from None
    return b"".join(out)


def body_too_large(limit: int) -> ApplicationError:
    return ApplicationError(
        f"the body exceeds {limit} bytes (decompressed); split the batch",
        code="too_large",
        status_code=413,
    )


def event_time_window(*, received_at_ms: int) -> tuple[int, int]:
    """The accepted event times (epoch ms, inclusive) for a request received at ``received_at_ms``.

    Not older than the raw events' retention (``EVENTS_RETENTION_DAYS``, the TTL of the events
    table: an older event would be accepted only to be dropped), not later than
    ``INGEST_EVENT_MAX_FUTURE_SECONDS`` ahead; and always within the store's range.
    """
    earliest = received_at_ms - settings.EVENTS_RETENTION_DAYS * 86_400_000
    latest = received_at_ms + settings.INGEST_EVENT_MAX_FUTURE_SECONDS * 1000
    return max(earliest, event_format.TIMESTAMP_MIN_MS), min(latest, event_format.TIMESTAMP_MAX_MS)


def _duration_text(seconds: int) -> str:
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _window_message(*, earliest: int, latest: int, corrected: bool) -> str:
    what = "timestamp (after the sentAt correction)" if corrected else "timestamp"
    return (
        f"{what} must lie between {schema.iso_ms(earliest)} and {schema.iso_ms(latest)}: "
        f"no older than {_duration_text(settings.EVENTS_RETENTION_DAYS * 86_400)}, "
        f"no more than {_duration_text(settings.INGEST_EVENT_MAX_FUTURE_SECONDS)} ahead"
    )


def events_prepare(
    *, decoded: schema.DecodedBatch, received_at_ms: int
) -> tuple[dict[str, list[Event]], list[EventError]]:
    """Apply type rules, drop in-batch duplicates, normalise, and group by userId.

    Returns the accepted events per userId (in request order) and every event's error, by index.
    This loop runs once per event: it is kept to attribute reads and dict/set operations.
    """
    errors = decoded.errors
    skew = 0 if decoded.sent_at_ms is None else received_at_ms - decoded.sent_at_ms
    earliest, latest = event_time_window(received_at_ms=received_at_ms)
    stored_min, stored_max = event_format.TIMESTAMP_MIN_MS, event_format.TIMESTAMP_MAX_MS
    window_error: str | None = None  # the message, built once per batch when first needed
    seen: dict[int, int] = {}
    groups: dict[str, list[Event]] = {}
    playback = _PLAYBACK_TYPES
    epoch, one_ms = schema.EPOCH, schema.ONE_MS
    for index, event in decoded.events:
        event_type = event.type
        if event_type in playback:
            if event.session_id is UNSET:
                errors.append(EventError(index, "sessionId", "required", f"sessionId is required for {event_type}"))
                continue
            if event.video_id is UNSET:
                errors.append(EventError(index, "videoId", "required", f"videoId is required for {event_type}"))
                continue
            if event_type == "error" and event.fatal is UNSET:
                event.fatal = True
        timestamp = event.timestamp
        if timestamp.__class__ is int:
            client_ms = timestamp  # msgspec checked the stored range of epoch milliseconds
        else:
            client_ms = (timestamp - epoch) // one_ms  # type: ignore[operator]
            if not stored_min <= client_ms <= stored_max:  # RFC 3339 goes from year 1 to 9999
                errors.append(schema.stored_range_error(index, "timestamp"))
                continue
        # received - (sentAt - timestamp): the client's clock offset removed.
        event_ms = client_ms + skew
        if not earliest <= event_ms <= latest:
            if window_error is None:
                window_error = _window_message(
                    earliest=earliest, latest=latest, corrected=decoded.sent_at_ms is not None
                )
            errors.append(EventError(index, "timestamp", "timestamp_out_of_range", window_error))
            continue
        event_id = event.event_id.int  # an int hashes in C; a UUID calls Python's __hash__
        first = seen.get(event_id)
        if first is not None:
            errors.append(EventError(index, "eventId", "duplicate", f"same eventId as event {first}; counted once"))
            continue
        seen[event_id] = index
        event.client_timestamp = client_ms
        event.timestamp = event_ms
        event.received_at = received_at_ms
        user_id = event.user_id
        group = groups.get(user_id)
        if group is None:
            groups[user_id] = [event]
        else:
            group.append(event)
    if len(errors) > 1:  # decoding errors come first; report all of them in request order
        errors.sort(key=lambda e: -1 if e.index is None else e.index)
    return groups, errors


def events_encode(*, groups: dict[str, list[Event]]) -> tuple[list[tuple[str, list[Part]]], list[Event]]:
    """Each user's events as JSON pieces of a v2 message value, in order; and the events refused.

    One encode call per user (the list, brackets dropped): the coalescer only joins these pieces
    when it produces a message. A user whose events do not fit in one message together is encoded
    event by event, so the coalescer can spread them over several messages. An event that does not
    fit in a message even alone (the broker would refuse it, and the client would retry it forever)
    is returned apart, to be rejected, not produced; so is an event whose properties encode to more
    than PROPERTIES_MAX_BYTES, looked for only among a user's events that encode to more than that
    together (that encoding is the check's free upper bound: no encode on the hot path).
    """
    room = settings.INGEST_MAX_MESSAGE_BYTES - BATCH_OVERHEAD
    properties_limit = event_format.PROPERTIES_MAX_BYTES
    out: list[tuple[str, list[Part]]] = []
    refused: list[Event] = []
    for user_id, group in groups.items():
        events = group
        encoded = _encode(events)
        if len(encoded) > properties_limit:
            events = []
            for event in group:
                if event.properties is UNSET or schema.properties_size_error(event.properties) is None:
                    events.append(event)
                else:
                    refused.append(event)
            if not events:
                continue
            if len(events) != len(group):
                encoded = _encode(events)
        if len(encoded) - 2 <= room:
            out.append((user_id, [(encoded[1:-1], len(events))]))
            continue
        parts: list[Part] = []
        for event in events:
            value = _encode(event)
            if len(value) <= room:
                parts.append((value, 1))
            else:
                refused.append(event)
        if parts:
            out.append((user_id, parts))
    return out, refused


def _refused_reject(*, refused: list[Event], decoded: schema.DecodedBatch, errors: list[EventError]) -> None:
    """The errors of the events ``events_encode`` refused (rare: each one's reason is found again)."""
    limit = settings.INGEST_MAX_MESSAGE_BYTES
    index_of = {id(event): index for index, event in decoded.events}
    for event in refused:
        index = index_of[id(event)]
        error = None if event.properties is UNSET else schema.properties_size_error(event.properties)
        if error is None:
            error = EventError(None, None, "too_large", f"the event alone encodes to over {limit} bytes")
        errors.append(EventError(index, error.field, error.code, error.message))
    errors.sort(key=lambda e: -1 if e.index is None else e.index)


def event_batch_ingest(*, body: bytes, content_type: str, content_encoding: str, received_at_ms: int) -> IngestResult:
    """Validate a batch and hand its valid events to Kafka; return once the broker acknowledged them.

    Raises ``ApplicationError``: 415 content type/encoding, 413 too large or too many events, 400
    when nothing in the body is acceptable, 503 (with ``Retry-After``) when Kafka did not
    acknowledge in time; in every error case nothing is reported accepted.
    """
    content_type_check(content_type=content_type)
    body = body_decompress(body=body, content_encoding=content_encoding)
    if len(body) > settings.INGEST_MAX_BODY_BYTES:
        raise body_too_large(settings.INGEST_MAX_BODY_BYTES)
    try:
        decoded = schema.batch_decode(body)
    except schema.BodyError as exc:
        instrumentation.events_rejected.labels(reason=exc.error.code).inc()
        raise _invalid_body(exc.error) from None
    except schema.TooManyEvents as exc:
        instrumentation.events_rejected.labels(reason="too_many_events").inc(exc.count)
        raise ApplicationError(str(exc), code="too_many_events", field="events", status_code=413) from None

    groups, errors = events_prepare(decoded=decoded, received_at_ms=received_at_ms)
    users, refused = events_encode(groups=groups)
    if refused:
        _refused_reject(refused=refused, decoded=decoded, errors=errors)
    accepted = sum(len(group) for group in groups.values()) - len(refused)
    if errors:
        instrumentation.rejections_count(Counter(error.code for error in errors))
    if accepted == 0:
        raise ApplicationError(
            "no event of the batch is valid" if errors else "the batch holds no events",
            code="all_rejected" if errors else "empty_batch",
            field="events",
            status_code=400,
            extra={"accepted": 0, "rejected": len(errors), "errors": [e.as_dict() for e in errors]},
        )

    try:
        producer_get().send(users, timeout=settings.INGEST_ACK_TIMEOUT_SECONDS)
    except DeliveryFailed as exc:
        instrumentation.events_rejected.labels(reason="broker_unavailable").inc(accepted)
        raise ApplicationError(
            f"the events could not be handed to Kafka ({exc.detail}); none was accepted, retry later",
            code="broker_unavailable",
            status_code=503,
            headers={"Retry-After": str(settings.INGEST_RETRY_AFTER_SECONDS)},
            extra={"accepted": 0, "rejected": accepted + len(errors)},
        ) from None
    instrumentation.events_accepted.inc(accepted)
    return IngestResult(accepted=accepted, rejected=len(errors), errors=errors)
