"""The process-wide Kafka producer of the ingest endpoint and the per-request acknowledgement wait.

Why one producer per process with a poll thread: requests are coalesced into v2 batch messages
per partition (``ingest.coalescer``) and librdkafka pipelines them (compression, one in-flight
pipeline per broker), which is where the throughput comes from; a producer per request would
defeat both. Delivery reports are served by one background thread calling ``poll()``, so request
threads only hand their events over and then block on their own ticket, released when the broker
has acknowledged (acks=all) every message holding any of that request's events, or on the first
failure.

Messages go to an explicit partition, ``partition_of(userId, partitions)``; the partition count
comes from the producer's metadata, cached for ``METADATA_MAX_AGE_SECONDS`` and refreshed sooner
after an unknown-partition error.

The producer is rebuilt when the Kafka settings change (tests point it at a private broker), after
a fork (a gunicorn worker must not share its parent's librdkafka threads) and after a fatal error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from django.conf import settings

from analytics_platform import event_format, kafka, tracing
from ingest import instrumentation
from ingest.coalescer import Coalescer, Part, Ticket

log = structlog.get_logger(__name__)

# How long a known partition count is trusted: partitions added to the topic are picked up within
# this time (a user's events then move to crc32(userId) % the new count, as for keyed messages).
METADATA_MAX_AGE_SECONDS = 30.0
# After a failed refresh with a count already known: try again this soon (one request at a time).
METADATA_RETRY_SECONDS = 5.0


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every message of a request in time; nothing may be reported accepted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def producer_config() -> dict[str, Any]:
    """librdkafka settings: durable (acks=all, idempotent) and compressed; the batching is ours (coalescer)."""
    ack_timeout_ms = int(settings.INGEST_ACK_TIMEOUT_SECONDS * 1000)
    return kafka.client_config(
        **{
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": settings.INGEST_PRODUCER_LINGER_MS,
            "batch.num.messages": settings.INGEST_PRODUCER_BATCH_MESSAGES,
            "compression.type": settings.INGEST_PRODUCER_COMPRESSION,
            # librdkafka's default, spelled out: a keyed message goes to crc32(key) % partitions,
            # which ``partition_of`` reproduces for the explicit partitions of v2 messages.
            "partitioner": "consistent_random",
            # A message still unacknowledged after the request gave up is abandoned soon after, so
            # the queue cannot grow without bound while the broker is away. The client retries it
            # with the same eventIds (the deduplication key downstream).
            "message.timeout.ms": max(ack_timeout_ms * 2, 5000),
            "queue.buffering.max.messages": settings.INGEST_PRODUCER_QUEUE_MESSAGES,
            "client.id": f"ingest-{os.getpid()}",
            **settings.INGEST_PRODUCER_EXTRA,
        }
    )


class EventProducer:
    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self.config = config
        self.topic = topic
        self.pid = os.getpid()
        self.fatal: KafkaError | None = None
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._partitions = 0  # 0: not known yet
        self._partitions_expire = 0.0
        self._metadata_lock = threading.Lock()
        self._coalescer = Coalescer(self._produce, self._on_delivery_error, topic=topic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="ingest-kafka-poll", daemon=True)
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.error("kafka producer fatal error", error=str(err))
        else:
            log.warning("kafka producer error", error=str(err))

    def _on_delivery_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART):
            self._partitions_expire = 0.0  # the partition count may have changed: ask the broker again

    def _produce(self, partition: int, value: bytes, on_delivery: Any, headers: list[tuple[str, bytes]] | None) -> None:
        if headers:
            self._producer.produce(self.topic, value, partition=partition, on_delivery=on_delivery, headers=headers)
        else:
            self._producer.produce(self.topic, value, partition=partition, on_delivery=on_delivery)

    def _poll_loop(self) -> None:
        next_gauge = 0.0
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
            except Exception:  # a raising callback must not end the thread: every request would time out
                log.exception("kafka producer poll failed")
            now = time.monotonic()
            if now >= next_gauge:
                instrumentation.producer_queue_depth.set(len(self._producer))
                next_gauge = now + 1.0

    def partitions(self, *, timeout: float) -> int:
        """The events topic's partition count, from a cached metadata answer.

        One thread refreshes a stale count while the others keep using it; with no count known
        yet every caller waits for it. Raises ``DeliveryFailed`` when no count is known and the
        broker does not answer within ``timeout``.
        """
        count = self._partitions
        now = time.monotonic()
        if count and now < self._partitions_expire:
            return count
        deadline = now + timeout
        if not self._metadata_lock.acquire(blocking=not count, timeout=-1 if count else timeout):
            if count:
                return count
            raise self._metadata_failed("another request's metadata request is still waiting")
        try:
            count = self._partitions
            if count and time.monotonic() < self._partitions_expire:
                return count
            try:
                metadata = self._producer.list_topics(self.topic, timeout=max(0.1, deadline - time.monotonic()))
                topic = metadata.topics.get(self.topic)
                if topic is None or topic.error is not None or not topic.partitions:
                    raise KafkaException(topic.error if topic is not None else "topic missing from metadata")
            except KafkaException as exc:
                log.warning("kafka metadata refresh failed", topic=self.topic, error=str(exc))
                if count:  # keep the known count; a broker really away fails the deliveries anyway
                    self._partitions_expire = time.monotonic() + METADATA_RETRY_SECONDS
                    return count
                raise self._metadata_failed(str(exc)) from None
            self._partitions = len(topic.partitions)
            self._partitions_expire = time.monotonic() + METADATA_MAX_AGE_SECONDS
            return self._partitions
        finally:
            self._metadata_lock.release()

    def _metadata_failed(self, detail: str) -> DeliveryFailed:
        instrumentation.delivery_failures.labels(reason="metadata_unavailable").inc()
        return DeliveryFailed("metadata_unavailable", f"Kafka did not give the topic's partition count: {detail}")

    def send(self, users: Iterable[tuple[str, list[Part]]], *, timeout: float) -> None:
        """Hand each user's encoded events to the coalescer and wait until the broker acknowledged them.

        ``users``: (userId, parts) in request order; a user's parts go, in order, to the buffer
        of ``partition_of(userId)``. Raises ``DeliveryFailed`` when the partition count is not
        known, on a delivery error, a full local queue or after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        partitions = self.partitions(timeout=timeout)
        partition_of = event_format.partition_of
        by_partition: dict[int, list[Part]] = {}
        for user_id, parts in users:
            partition = partition_of(user_id, partitions)
            pending = by_partition.get(partition)
            if pending is None:
                by_partition[partition] = list(parts)
            else:
                pending.extend(parts)
        if not by_partition:
            return
        ticket = Ticket(tracing.current_link() if tracing.ENABLED else None)
        self._coalescer.submit(
            ticket,
            by_partition,
            linger=settings.INGEST_COALESCE_MS / 1000,
            limit=settings.INGEST_MAX_MESSAGE_BYTES,
        )
        if not ticket.done.wait(max(0.0, deadline - time.monotonic())):
            instrumentation.delivery_failures.labels(reason="ack_timeout").inc()
            raise DeliveryFailed("ack_timeout", f"Kafka did not acknowledge the events within {timeout:g}s")
        if ticket.reason is not None:
            raise DeliveryFailed(ticket.reason, ticket.detail)

    def alive(self) -> bool:
        return self._thread.is_alive() and self._coalescer.alive()

    def close(self, timeout: float = 0.0) -> None:
        self._coalescer.close()
        self._stop.set()
        self._thread.join(1.0)
        self._producer.flush(timeout)

    def __len__(self) -> int:
        return len(self._producer)


_lock = threading.Lock()
_current: EventProducer | None = None


def producer_get() -> EventProducer:
    """The process's producer for the current settings (built on first use, rebuilt when stale)."""
    global _current
    producer = _current
    if (
        producer is not None
        and producer.pid == os.getpid()
        and producer.fatal is None
        and producer.config["bootstrap.servers"] == settings.KAFKA_BOOTSTRAP_SERVERS
        and producer.alive()
    ):
        return producer
    with _lock:
        producer = _current
        config = producer_config()
        topic = kafka.topic_name(event_format.EVENTS_TOPIC)
        if (
            producer is None
            or producer.pid != os.getpid()
            or producer.fatal is not None
            or not producer.alive()
            or producer.config != config
            or producer.topic != topic
        ):
            if producer is not None and producer.pid == os.getpid():
                producer.close()
            producer = _current = EventProducer(config, topic)
        return producer


def producer_reset() -> None:
    """Drop the current producer (tests, shutdown); queued messages are abandoned."""
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        _current = None
