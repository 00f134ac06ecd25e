"""Draining the events topic into ClickHouse before the local broker stops.

Tansu keeps topics and offsets in memory only, so what the stream worker has not committed when
the broker stops is lost. The stream worker commits a partition's offset only after its sinks have
written the rows of every message before it (Quix ``Checkpoint.commit``: sinks, then changelogs,
then offsets), so "the group's committed offset is past the last accepted message" means "every
accepted event of that partition is in ClickHouse".

How the end of a partition is known, and why not by asking the broker for it: Tansu 0.6.0's
ListOffsets LATEST answers the base offset of the last batch plus one, not the high watermark
(measured: 3 batches of 5 records, offsets 0-14, got 11 from ``AdminClient.list_offsets`` and
from ``Consumer.get_watermark_offsets(cached=False)``; the high watermark in Fetch responses, 15,
and the committed offsets from ``list_consumer_group_offsets`` were right). Comparing committed
offsets with ListOffsets would declare a partition drained up to a whole batch early. The worker's
Prometheus lag gauge has the same blind spot and more (librdkafka's statistics come every 5 s and
measure the consumed position, not the committed one). So once ingest has stopped the devstack
appends a marker to each partition itself and takes its offset from the produce acknowledgement,
an offset the broker reports exactly: the partition is drained when the committed offset reaches
the marker's (a committed offset is the next message to process, so every message before the
marker is written). No change to the worker is needed, and messages after the marker (the
worker's own idle ticks) cannot make the partition look undrained.

The marker is a tick (``streams.processors.tick_message``), the message the worker's idle ticker
already appends to quiet partitions: the processor reads it as "the wall clock is now", which
closes the views that are due, and writes nothing else.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from django.conf import settings

from analytics_platform import event_format, kafka


class DrainError(Exception):
    """The drain could not start (the broker does not answer): nothing can be measured."""


@dataclass
class DrainProgress:
    """Where the stream worker's group stands against the markers, per partition of the topic."""

    topic: str
    markers: dict[int, int]  # partition -> the marker's offset
    positions: dict[int, int] = field(default_factory=dict)  # partition -> committed offset (next to process)
    seconds: float = 0.0
    note: str = ""  # why the last look-up failed, if it did
    initial: int = -1  # the total at the first look-up: what the drain had to do

    @property
    def left(self) -> dict[int, int]:
        """Messages before the marker not committed yet. A committed offset is the next message to
        process: at the marker's offset every message before it is written; the marker itself need
        not be processed."""
        return {p: max(0, marker - self.positions.get(p, 0)) for p, marker in self.markers.items()}

    @property
    def total(self) -> int:
        return sum(self.left.values())

    @property
    def drained(self) -> bool:
        return self.total == 0 and not self.note

    def describe(self, events: int | None = None) -> str:
        waiting = ", ".join(f"{partition}: {n}" for partition, n in sorted(self.left.items()) if n)
        what = f"{self.total} messages" if events is None else f"{events} events in {self.total} messages"
        note = f"; {self.note}" if self.note else ""
        return f"{what} on {self.topic} not yet in ClickHouse (by partition: {waiting or 'none'}){note}"


def markers_produce(*, topic: str, timeout: float = 15.0) -> dict[int, int]:
    """Append a tick to every partition of ``topic``; return partition -> the tick's offset."""
    # Imported here: the stream worker's modules (Quix, the processor) are not needed by the rest
    # of the supervisor, and the tick's format must be the one the worker reads.
    from streams.app import TICK_KEY
    from streams.processors import tick_message

    admin = AdminClient(kafka.client_config())
    metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise DrainError(f"topic {topic} not found on the broker: {metadata.error if metadata else 'no metadata'}")
    offsets: dict[int, int] = {}
    errors: list[str] = []

    def delivered(error: KafkaError | None, message: Any) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            offsets[message.partition()] = message.offset()

    producer = Producer(
        kafka.client_config(**{"acks": "all", "linger.ms": 0, "message.timeout.ms": int(timeout * 1000)})
    )
    now_ms = int(time.time() * 1000)
    for partition in metadata.partitions:
        producer.produce(topic, tick_message(now_ms), TICK_KEY, partition=partition, on_delivery=delivered)
    producer.flush(timeout)
    if errors or len(offsets) != len(metadata.partitions):
        raise DrainError(f"markers not delivered to {topic}: {errors[:3] or 'timed out'}")
    return offsets


def committed_get(
    *, admin: AdminClient, group: str, topic: str, partitions: list[int], timeout: float
) -> dict[int, int]:
    """The group's committed offset per partition (-1001, librdkafka's "invalid", when none)."""
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
    result = admin.list_consumer_group_offsets([request], request_timeout=timeout)[group].result(timeout)
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.error is None}


def positions_get(
    *, admin: AdminClient, group: str, topic: str, partitions: list[int], earliest: dict[int, int], timeout: float
) -> dict[int, int]:
    """Per partition, the group's committed offset, or the earliest offset where it never committed."""
    committed = committed_get(admin=admin, group=group, topic=topic, partitions=partitions, timeout=timeout)
    return {p: committed[p] if committed.get(p, -1) >= 0 else earliest.get(p, 0) for p in partitions}


def events_left_count(progress: DrainProgress, *, timeout: float = 10.0) -> int | None:
    """The events in the messages a failed drain leaves behind (None when not all could be read).

    Read once, when a drain gives up, so that its last line says what is lost in the unit a
    developer posted; a message holds the events of many users (v2) or of one request (v1).
    """
    left = {p: n for p, n in progress.left.items() if n}
    if not left:
        return 0
    consumer = Consumer(
        kafka.client_config(**{"group.id": f"devstack-drain-{uuid.uuid4().hex}", "enable.auto.commit": False})
    )
    events, pending = 0, dict(left)
    try:
        consumer.assign([TopicPartition(progress.topic, p, progress.positions.get(p, 0)) for p in left])
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None or message.partition() not in pending:
                continue
            partition = message.partition()
            if message.offset() >= progress.markers[partition]:
                pending.pop(partition)
                continue
            try:
                body = orjson.loads(message.value() or b"")
            except orjson.JSONDecodeError:
                body = None
            found = body.get("events") if isinstance(body, dict) else None
            events += len(found) if isinstance(found, list) else 1  # a poison message counts as one
            pending[partition] -= 1
            if pending[partition] <= 0:
                pending.pop(partition)
    except KafkaException:
        return None  # the broker is gone: the messages count is all there is
    finally:
        consumer.close()
    return None if pending else events


def events_drain(
    *,
    timeout: float,
    pause: Callable[[float], bool],
    report: Callable[[DrainProgress], None],
    report_every: float = 5.0,
) -> DrainProgress:
    """Wait until the stream worker has committed every message of the events topic, or ``timeout``.

    Call it after ingest has stopped: what arrives later is not covered. ``pause(seconds)`` sleeps
    (supervising the other children) and returns False to abandon the wait (a second Ctrl-C);
    ``report`` gets the progress every ``report_every`` seconds. Returns the last progress.
    """
    topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    group = settings.STREAMS_CONSUMER_GROUP
    admin = AdminClient(kafka.client_config())
    try:
        markers = markers_produce(topic=topic)
        # EARLIEST is right on Tansu (only LATEST is off); it is needed only for a partition the
        # group never committed.
        requests = {TopicPartition(topic, p): OffsetSpec.earliest() for p in markers}
        earliest = {tp.partition: f.result(10).offset for tp, f in admin.list_offsets(requests).items()}
    except KafkaException as exc:
        raise DrainError(f"the broker did not answer: {exc}") from exc
    started = time.monotonic()  # the wait is bounded, not the markers' production (their own timeout)
    progress = DrainProgress(topic, markers, dict(earliest))
    last_report = started
    while True:
        try:
            progress.positions = positions_get(
                admin=admin, group=group, topic=topic, partitions=sorted(markers), earliest=earliest, timeout=5.0
            )
            progress.note = ""
            if progress.initial < 0:
                progress.initial = progress.total
        except KafkaException as exc:  # the broker is busy or restarting: retried until the deadline
            progress.note = f"committed offsets unavailable: {exc}"
        progress.seconds = time.monotonic() - started
        if progress.drained or progress.seconds >= timeout:
            return progress
        if time.monotonic() - last_report >= report_every:
            report(progress)
            last_report = time.monotonic()
        if not pause(min(0.5, timeout - progress.seconds)):
            return progress


def progress_refresh(progress: DrainProgress) -> DrainProgress:
    """``progress`` with the group's committed offsets of now (after the worker's last checkpoint)."""
    admin = AdminClient(kafka.client_config())
    partitions = sorted(progress.markers)
    progress.positions = positions_get(
        admin=admin,
        group=settings.STREAMS_CONSUMER_GROUP,
        topic=progress.topic,
        partitions=partitions,
        earliest=progress.positions,
        timeout=5.0,
    )
    progress.note = ""
    return progress
