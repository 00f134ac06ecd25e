"""Dead letters of rows ClickHouse refused, and the producer that makes them durable.

The sink skips replayed rows by source offset (streams/sinks.py), so once a later row of the same
partition is in ClickHouse, a rejected row is never tried again: its dead letter must be
acknowledged by the broker before that happens. ``RejectedRowsProducer.flush`` waits for the
acknowledgements (``acks=all``) and raises ``DeadLetterDeliveryError`` when any is missing; the
sink calls it before its next INSERT into that table and before it records a chunk as written.

Not ``DerivedEventsSink``: that one is fed and polled by the worker's main thread and flushed at
each checkpoint (after this sink), and under exactly-once the worker has none; this producer is
used from the sink's writer threads only, and waits mid-chunk.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import orjson

from analytics_platform import warehouse
from streams import dead_letters
from streams.clickhouse_errors import DeadLetterDeliveryError

FLUSH_TIMEOUT_SECONDS = 30.0
# Parts of a server error that name where this attempt ran (the server's spool file of the INSERT's
# data, a stack trace), not what was wrong: dropped so a replay finds the same record (dead_letters.py).
_ATTEMPT_DETAILS = re.compile(r" ?\(in file/uri [^)]*\):?|\s*Stack trace:.*\Z", re.DOTALL)


class RejectedRows(Protocol):
    """Where the sink sends the dead letters of rejected rows (``RejectedRowsProducer``, test doubles).

    ``channel``: the sink's table. Each table's writer thread must learn whether *its own* dead
    letters were acknowledged, whatever the other thread flushed in between.
    """

    def send(self, record: dict[str, Any], *, channel: str) -> None: ...

    def flush(self, *, channel: str) -> None: ...


# ``events`` columns -> the event fields they were decoded from (streams/processors/decoding.py,
# ``_struct_row``); ``late`` and the Kafka columns are the worker's, not the client's.
_EVENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("event_id", "eventId"),
    ("type", "type"),
    ("user_id", "userId"),
    ("ts", "timestamp"),
    ("received_at", "receivedAt"),
    ("client_ts", "clientTimestamp"),
    ("session_id", "sessionId"),
    ("video_id", "videoId"),
    ("position_ms", "positionMs"),
    ("bitrate_kbps", "bitrateKbps"),
    ("error_code", "errorCode"),
    ("error_message", "errorMessage"),
    ("fatal", "fatal"),
    ("device", "device"),
    ("os", "os"),
    ("browser", "browser"),
    ("country", "country"),
    ("cdn", "cdn"),
    ("player", "player"),
)


def event_from_row(row: dict[str, Any]) -> dict[str, Any]:
    """The event (event_format's normalised form, as ingest writes it) an ``events`` row was made from.

    What the processor turned into a column default (``""``, null, ``false``) is left out, as the
    client would have; ``properties`` goes back from its JSON text to an object. Decoding this
    event again gives the same row, so a replay after a fix stores exactly what was refused.
    """
    event: dict[str, Any] = {}
    for column, name in _EVENT_FIELDS:
        value = row.get(column)
        if value is not None and value != "" and value is not False:
            event[name] = str(value) if column == "event_id" else value
    properties = row.get("properties")
    if properties:
        try:
            event["properties"] = orjson.loads(properties)
        except orjson.JSONDecodeError:
            event["properties"] = properties  # kept as it was: the replay's validation reports it
    return event


def rejected_row_dead_letter(
    *, table: str, columns: Sequence[str], row: Sequence[Any], error: BaseException, topic: str, partition: int
) -> dict[str, Any]:
    """The dead letter of ``row`` (a row of ``table`` in ``columns`` order) that ClickHouse refused.

    ``table`` and ``row`` (the row as a JSON object by column name) say exactly what was refused.
    ``payload`` is, for an ``events`` row, the event it was made from, so that ``manage.py
    dead_letters replay`` can send it again after a fix like any dead-lettered event; a
    ``view_summaries`` row is derived from many events and is no event to replay, so its payload is
    the row itself. ``detail`` is the server's error text (truncated by ``dead_letter``).
    """
    values = dict(zip(columns, row, strict=True))
    user_id = values.get("user_id")
    event_id = values.get("event_id")
    payload = values if table != warehouse.EVENTS else event_from_row(values)
    record = dead_letters.dead_letter(
        dead_letters.CLICKHOUSE_REJECTED,
        f"{table}: {_ATTEMPT_DETAILS.sub('', str(error))}",
        payload=orjson.dumps(payload, default=str),
        partition=partition,
        offset=int(row[-1]),
        key=str(user_id).encode() if user_id else None,
        topic=topic,
        stage="sink",
        event_id=str(event_id) if event_id is not None else None,
        user_id=str(user_id) if user_id is not None else None,
    )
    record["table"] = table
    record["row"] = values
    return record


class RejectedRowsProducer:
    """Produces dead-letter records to ``topic``, keyed by userId; ``flush`` waits for every ack.

    Thread-safe: both tables' writer threads send through it (librdkafka's producer is thread-safe).
    Delivery failures are kept per channel until that channel flushes: with one shared list, one
    thread's flush could take (and raise for) the other's failure, and the other would then go on
    writing rows after a dead letter that never reached the broker.
    """

    def __init__(self, producer: Any, topic: str, *, on_sent: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._on_sent = on_sent
        self._lock = threading.Lock()
        self._errors: dict[str, list[str]] = defaultdict(list)
        self._unacknowledged: dict[str, list[dict[str, Any]]] = defaultdict(list)  # for ``on_sent``, once acked

    def _on_delivery(self, channel: str, error: Any, message: Any) -> None:
        if error is not None:
            with self._lock:
                self._errors[channel].append(str(error))

    def send(self, record: dict[str, Any], *, channel: str = "") -> None:
        key = record.get("key")
        on_delivery = partial(self._on_delivery, channel)
        while True:
            try:
                self._producer.produce(
                    self._topic, orjson.dumps(record), key.encode() if key else None, on_delivery=on_delivery
                )
                break
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let the broker catch up
        with self._lock:
            self._unacknowledged[channel].append(record)

    def flush(self, *, channel: str = "") -> None:
        # Waits for every queued message, the other channel's too: a delivery report reaches its
        # channel's list whichever thread serves it.
        pending = self._producer.flush(FLUSH_TIMEOUT_SECONDS)
        with self._lock:
            failed = self._errors.pop(channel, [])
            sent = self._unacknowledged.pop(channel, [])
        if pending or failed:
            # The chunk is retried (none of this channel's later rows were written), and its
            # rejected rows are found and sent again.
            raise DeadLetterDeliveryError(f"dead letters not acknowledged: {pending} pending, errors {failed[:5]}")
        if self._on_sent is not None:
            for record in sent:
                self._on_sent(record)
