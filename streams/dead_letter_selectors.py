"""Reading the dead-letter topic: list and count dead letters by reason, stage and time.

The topic is read from the beginning by a consumer of its own: partitions are *assigned* (no group
join, nothing committed), so reading never moves anybody's offsets and two operators can read at
once. It is read until every partition reports end-of-partition (``enable.partition.eof``), not
up to ``get_watermark_offsets``: the local Tansu broker's ListOffsets under-reports the high
watermark when the last batch holds several records (measured: 6 reported, 8 records there),
while the Fetch answers that tell librdkafka where the partition ends are right. The watermark is
still used as a floor: a partition's end is not accepted below it.

"Time" is the Kafka timestamp of the dead-letter message: the worker produces a dead letter with
the timestamp of the message it came from, i.e. about when ingest accepted the events.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from analytics_platform import event_format, kafka
from streams import dead_letters

READ_TIMEOUT_SECONDS = 60.0
COUNT_KEYS = ("reason", "stage", "day", "field")


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter and where it sits in the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    time: datetime  # the Kafka timestamp of the dead-letter message (UTC)
    record: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.record.get("reason") or "")

    @property
    def stage(self) -> str:
        return str(self.record.get("stage") or "")

    @property
    def event_id(self) -> str | None:
        value = self.record.get("eventId")
        return value if isinstance(value, str) else None

    def payload(self) -> bytes:
        return dead_letters.payload_bytes(self.record)

    def as_json(self) -> dict[str, Any]:
        """The record with its position and time: what ``dead_letters list --json`` prints per line."""
        return {
            "dlqTopic": self.topic,
            "dlqPartition": self.partition,
            "dlqOffset": self.offset,
            "time": self.time.isoformat(timespec="milliseconds"),
            **self.record,
        }


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters an operation is about; every criterion given must hold."""

    reasons: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    event_ids: frozenset[str] = frozenset()  # lower-case; also matches the events of a message-level letter

    def matches(self, entry: DeadLetterEntry) -> bool:
        if self.reasons and entry.reason not in self.reasons:
            return False
        if self.stages and entry.stage not in self.stages:
            return False
        if self.since is not None and entry.time < self.since:
            return False
        if self.until is not None and entry.time >= self.until:
            return False
        # A message-level dead letter has no eventId of its own: it is kept, and the replay picks
        # the wanted events out of its payload.
        if self.event_ids and entry.event_id is not None:
            return entry.event_id.lower() in self.event_ids
        return True


def dead_letters_read(*, timeout: float = READ_TIMEOUT_SECONDS, topic: str | None = None) -> Iterator[DeadLetterEntry]:
    """Every dead letter of the dead-letter topic, partition by partition interleaved, oldest first per partition.

    Raises ``KafkaException`` when the topic is missing or its end is not reached within ``timeout``.
    A message that is not a dead-letter record (not JSON, another ``type``) is yielded with a
    record holding ``reason`` ``"not_a_dead_letter"``, so that nothing in the topic goes unseen.
    """
    name = topic or kafka.topic_name(event_format.EVENTS_DLQ_TOPIC)
    consumer = Consumer(
        kafka.client_config(
            **{
                # Required by librdkafka even for assigned partitions; never joined, never committed.
                "group.id": f"dead-letters-read-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                # Dead letters are produced outside transactions under at-least-once; under
                # exactly-once a read_committed reader would stall on Tansu's never-closed
                # transactions of a dead producer (ENVIRONMENT.md). Operators want to see it all.
                "isolation.level": "read_uncommitted",
            }
        )
    )
    try:
        metadata = consumer.list_topics(name, timeout=min(timeout, 30.0))
        info = metadata.topics.get(name)
        if info is None or info.error is not None:
            raise KafkaException(f"dead-letter topic {name!r} not available: {info.error if info else 'missing'}")
        partitions = sorted(info.partitions)
        floors = {
            p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=min(timeout, 30.0))[1]
            for p in partitions
        }
        # Every partition, empty ones too: an empty one reports its end at once, and a watermark of
        # 0 is not trusted to mean empty on this broker.
        open_partitions = set(partitions)
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while open_partitions:
            if time.monotonic() > deadline:
                raise KafkaException(
                    f"end of {name!r} not reached within {timeout:g}s (partitions {sorted(open_partitions)})"
                )
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if message.offset() >= floors[message.partition()]:
                        open_partitions.discard(message.partition())
                    continue
                if error.fatal() or not error.retriable():
                    raise KafkaException(error)
                continue
            yield _entry(name, message)
    finally:
        consumer.close()


def _entry(topic: str, message: Any) -> DeadLetterEntry:
    _, timestamp_ms = message.timestamp()
    when = datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, tz=UTC)
    try:
        record = orjson.loads(message.value() or b"")
    except orjson.JSONDecodeError:
        record = None
    if type(record) is not dict or record.get("type") != dead_letters.RECORD_TYPE:
        record = {
            "reason": "not_a_dead_letter",
            "stage": None,
            "detail": "this message of the dead-letter topic is not a dead-letter record",
            "payloadBase64": base64.b64encode(message.value() or b"").decode("ascii"),
        }
    return DeadLetterEntry(
        topic=topic, partition=message.partition(), offset=message.offset(), time=when, record=record
    )


def dead_letter_list(
    *, filters: DeadLetterFilter, limit: int | None = None, timeout: float = READ_TIMEOUT_SECONDS
) -> list[DeadLetterEntry]:
    """The dead letters matching ``filters``, ordered by time then position; at most ``limit`` (the oldest)."""
    entries = sorted(
        (e for e in dead_letters_read(timeout=timeout) if filters.matches(e)),
        key=lambda e: (e.time, e.partition, e.offset),
    )
    return entries[:limit] if limit is not None else entries


def dead_letter_count(
    *, filters: DeadLetterFilter, by: Sequence[str] = ("reason",), timeout: float = READ_TIMEOUT_SECONDS
) -> list[tuple[tuple[str, ...], int]]:
    """Counts of the matching dead letters grouped by ``by`` (keys of ``COUNT_KEYS``), largest first."""
    unknown = set(by) - set(COUNT_KEYS)
    if unknown:
        raise ValueError(f"cannot count by {sorted(unknown)}; choose from {COUNT_KEYS}")
    counts = Counter(_group(e, by) for e in dead_letters_read(timeout=timeout) if filters.matches(e))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def _group(entry: DeadLetterEntry, by: Iterable[str]) -> tuple[str, ...]:
    values = []
    for key in by:
        if key == "day":
            values.append(entry.time.date().isoformat())
        else:
            values.append(str(entry.record.get(key) or "-"))
    return tuple(values)
