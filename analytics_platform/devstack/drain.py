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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from django.conf import settings

from analytics_platform import event_format, kafka


class DrainError(Exception):
    """The drain could not start (the broker does not answer): nothing can be measured."""


@dataclass
class DrainProgress:
    """Messages per partition that precede the marker and are not committed yet."""

    topic: str
    left: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""  # why the last look-up failed, if it did
    initial: int = -1  # the total at the first look-up: what the drain had to do

    @property
    def total(self) -> int:
        return sum(self.left.values())

    @property
    def drained(self) -> bool:
        return self.total == 0

    def describe(self) -> str:
        waiting = ", ".join(f"{partition}: {n}" for partition, n in sorted(self.left.items()) if n)
        note = f"; {self.note}" if self.note else ""
        return f"{self.total} messages on {self.topic} not yet in ClickHouse (by partition: {waiting or 'none'}){note}"


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


def progress_get(
    *, admin: AdminClient, group: str, topic: str, markers: dict[int, int], earliest: dict[int, int], timeout: float
) -> dict[int, int]:
    """Per partition, the messages before the marker that the group has not committed."""
    committed = committed_get(admin=admin, group=group, topic=topic, partitions=sorted(markers), timeout=timeout)
    left = {}
    for partition, marker in markers.items():
        position = committed.get(partition, -1)
        start = position if position >= 0 else earliest.get(partition, 0)  # never committed: from the start
        # A committed offset is the next message to process: at the marker's offset, every message
        # before it is written. The marker itself need not be processed.
        left[partition] = max(0, marker - start)
    return left


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
    started = time.monotonic()
    topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    group = settings.STREAMS_CONSUMER_GROUP
    markers = markers_produce(topic=topic)
    admin = AdminClient(kafka.client_config())
    # EARLIEST is right on Tansu (only LATEST is off); it is needed only for a partition the group
    # never committed.
    requests = {TopicPartition(topic, p): OffsetSpec.earliest() for p in markers}
    earliest = {tp.partition: f.result(10).offset for tp, f in admin.list_offsets(requests).items()}
    progress = DrainProgress(topic)
    last_report = started
    while True:
        try:
            progress.left = progress_get(
                admin=admin, group=group, topic=topic, markers=markers, earliest=earliest, timeout=5.0
            )
            progress.note = ""
            if progress.initial < 0:
                progress.initial = progress.total
        except KafkaException as exc:  # the broker is busy or restarting: retried until the deadline
            progress.note = f"committed offsets unavailable: {exc}"
            progress.left = progress.left or {p: max(0, m - earliest.get(p, 0)) for p, m in markers.items()}
        progress.seconds = time.monotonic() - started
        if (progress.drained and not progress.note) or progress.seconds >= timeout:
            return progress
        if time.monotonic() - last_report >= report_every:
            report(progress)
            last_report = time.monotonic()
        if not pause(min(0.5, timeout - progress.seconds)):
            return progress
