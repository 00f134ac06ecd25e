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


def body_decompress(*, body: bytes, content_encoding: str) -> bytes:
    """Undo ``Content-Encoding: gzip`` without ever holding more than the size limit in memory."""
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
    out: list[bytes] = []
    size = 0
    data = body
    try:
        while True:  # a gzip stream may hold several members
            inflater = zlib.decompressobj(wbits=31)
            chunk = inflater.decompress(data, limit + 1 - size)
            size += len(chunk)
            out.append(chunk)
            if size > limit:
                raise body_too_large(limit)
            if not inflater.eof:
                raise zlib.error("truncated gzip stream")
            data = inflater.unused_data
            if not data:
                break
    except zlib.error as exc:
        raise _invalid_body(EventError(None, None, "invalid_gzip", f"the body is not valid gzip: {exc}")) from None
    return b"".join(out)


def body_too_large(limit: int) -> ApplicationError:
    return ApplicationError(
        f"the body exceeds {limit} bytes (decompressed); split the batch",
        code="too_large",
        status_code=413,
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
        event_id = event.event_id.int  # an int hashes in C; a UUID calls Python's __hash__
        first = seen.get(event_id)
        if first is not None:
            errors.append(EventError(index, "eventId", "duplicate", f"same eventId as event {first}; counted once"))
            continue
        seen[event_id] = index
        timestamp = event.timestamp
        client_ms = timestamp if timestamp.__class__ is int else (timestamp - epoch) // one_ms  # type: ignore[operator]
        event.client_timestamp = client_ms
        # received - (sentAt - timestamp): the client's clock offset removed.
        event.timestamp = client_ms + skew
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
    """Each user's events as JSON pieces of a v2 message value, in order; and the events too large.

    One encode call per user (the list, brackets dropped): the coalescer only joins these pieces
    when it produces a message. A user whose events do not fit in one message together is encoded
    event by event, so the coalescer can spread them over several messages. An event that does not
    fit in a message even alone (the broker would refuse it, and the client would retry it forever)
    is returned apart, to be rejected, not produced.
    """
    room = settings.INGEST_MAX_MESSAGE_BYTES - BATCH_OVERHEAD
    out: list[tuple[str, list[Part]]] = []
    oversized: list[Event] = []
    for user_id, events in groups.items():
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
                oversized.append(event)
        if parts:
            out.append((user_id, parts))
    return out, oversized


def _oversized_reject(*, oversized: list[Event], decoded: schema.DecodedBatch, errors: list[EventError]) -> None:
    limit = settings.INGEST_MAX_MESSAGE_BYTES
    index_of = {id(event): index for index, event in decoded.events}
    for event in oversized:
        errors.append(
            EventError(index_of[id(event)], None, "too_large", f"the event alone encodes to over {limit} bytes")
        )
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
    users, oversized = events_encode(groups=groups)
    if oversized:
        _oversized_reject(oversized=oversized, decoded=decoded, errors=errors)
    accepted = sum(len(group) for group in groups.values()) - len(oversized)
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
