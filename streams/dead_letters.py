"""Dead letters: what the stream worker could not store, with a machine-readable reason.

One record per dead-lettered *event* (or per message, when the message as a whole is unusable),
produced as JSON to the ``events-dlq`` topic, keyed by the userId when it is known. The record
keeps the original bytes, so a dead letter can be replayed after a fix (``manage.py
dead_letters``) and nothing the client sent is lost:

* ``type``: always ``"DeadLetter"`` (the derived-events router tells it from VideoWatched/VideoError);
* ``reason``: a code from ``REASONS`` (stable, for counting and for choosing what to replay);
* ``field``: the offending field when one is known, else null; ``detail``: a human-readable text;
* ``stage``: ``"decode"`` (the processor refused it) or ``"sink"`` (ClickHouse refused its row);
* ``topic``, ``partition``, ``offset``: where the message came from; ``key``: its key (text);
* ``eventId``, ``userId``: when they could be read, else null;
* ``payload``: the original bytes (the event's own JSON for an event, the whole message for a
  message) as text when they are UTF-8, else ``payloadBase64``;
* ``v``: the record format version (1).

Deterministic: the record depends only on the message (never on the clock), so a replayed
message yields the same dead letters, and the ids of what was replayed stay meaningful.
"""

from __future__ import annotations

import base64
from typing import Any, Final

RECORD_VERSION: Final = 1
RECORD_TYPE: Final = "DeadLetter"

# reason codes
INVALID_JSON: Final = "invalid_json"  # the bytes are not JSON
INVALID_MESSAGE: Final = "invalid_message"  # JSON, but not a message of the events topic
UNKNOWN_VERSION: Final = "unknown_version"  # a message version this worker does not know
INVALID_EVENT: Final = "invalid_event"  # an event breaks the event contract (``field`` names what)
INVALID_TICK: Final = "invalid_tick"  # a control tick whose time is not in the stored range
PROCESSOR_ERROR: Final = "processor_error"  # a bug: processing raised; the message is kept whole
CLICKHOUSE_REJECTED: Final = "clickhouse_rejected"  # ClickHouse refused the row deterministically

REASONS: Final = frozenset(
    {INVALID_JSON, INVALID_MESSAGE, UNKNOWN_VERSION, INVALID_EVENT, INVALID_TICK, PROCESSOR_ERROR, CLICKHOUSE_REJECTED}
)
DETAIL_MAX_CHARS: Final = 2000  # a server error may quote a whole INSERT


def dead_letter(
    reason: str,
    detail: str,
    *,
    payload: bytes,
    partition: int,
    offset: int,
    key: bytes | None = None,
    topic: str = "events",
    stage: str = "decode",
    field: str | None = None,
    event_id: str | None = None,
    user_id: str | None = None,
) -> dict[str, Any]:
    """One dead-letter record (see the module docstring for the fields)."""
    record: dict[str, Any] = {
        "v": RECORD_VERSION,
        "type": RECORD_TYPE,
        "reason": reason,
        "field": field,
        "detail": detail[:DETAIL_MAX_CHARS],
        "stage": stage,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key else None,
        "eventId": event_id,
        "userId": user_id,
    }
    try:
        record["payload"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        record["payloadBase64"] = base64.b64encode(payload).decode("ascii")
    return record


def payload_bytes(record: dict[str, Any]) -> bytes:
    """The original bytes a dead letter keeps."""
    text = record.get("payload")
    if isinstance(text, str):
        return text.encode("utf-8")
    return base64.b64decode(record.get("payloadBase64") or b"")
