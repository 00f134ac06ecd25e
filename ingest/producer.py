"""The process-wide Kafka producer of the ingest endpoint and the per-request acknowledgement wait.

Why one producer per process with a poll thread: librdkafka batches across requests (linger,
compression, one in-flight pipeline per broker), which is where the throughput comes from; a
producer per request would defeat it. Delivery reports are served by one background thread calling
``poll()``, so request threads only ``produce()`` and then block on their own latch, released when
the broker has acknowledged (acks=all) every message of that request, or on the first failure.

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
from confluent_kafka import KafkaError, Message, Producer
from django.conf import settings

from analytics_platform import event_format, kafka
from ingest import instrumentation

log = structlog.get_logger(__name__)


class DeliveryFailed(Exception):
    """Kafka did not acknowledge every message of a request in time; nothing may be reported accepted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class _Acks:
    """Counts one request's delivery reports down; only the poll thread calls it."""

    __slots__ = ("done", "error", "remaining")

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.error: KafkaError | None = None
        self.done = threading.Event()

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            instrumentation.delivery_failures.labels(reason=err.name()).inc()
            if self.error is None:
                self.error = err
            self.done.set()
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()


def producer_config() -> dict[str, Any]:
    """librdkafka settings: durable (acks=all, idempotent) and batched (linger, compression)."""
    ack_timeout_ms = int(settings.INGEST_ACK_TIMEOUT_SECONDS * 1000)
    return kafka.client_config(
        **{
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": settings.INGEST_PRODUCER_LINGER_MS,
            "batch.num.messages": settings.INGEST_PRODUCER_BATCH_MESSAGES,
            "compression.type": settings.INGEST_PRODUCER_COMPRESSION,
            # librdkafka's default, spelled out: the partition is crc32(userId) % partitions.
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="ingest-kafka-poll", daemon=True)
        self._thread.start()

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            log.error("kafka producer fatal error", error=str(err))
        else:
            log.warning("kafka producer error", error=str(err))

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

    def send(self, messages: Iterable[tuple[bytes, bytes]], *, count: int, timeout: float) -> None:
        """Produce ``count`` (key, value) messages and wait until the broker acknowledged all of them.

        Raises ``DeliveryFailed`` on a delivery error, a full local queue or after ``timeout``.
        """
        if count == 0:
            return
        acks = _Acks(count)
        produce = self._producer.produce
        topic = self.topic
        try:
            for key, value in messages:
                produce(topic, value, key, on_delivery=acks)
        except BufferError:
            instrumentation.delivery_failures.labels(reason="queue_full").inc()
            raise DeliveryFailed("queue_full", "the Kafka producer queue is full") from None
        if not acks.done.wait(timeout):
            instrumentation.delivery_failures.labels(reason="ack_timeout").inc()
            raise DeliveryFailed("ack_timeout", f"Kafka did not acknowledge the events within {timeout:g}s")
        if acks.error is not None:
            raise DeliveryFailed(acks.error.name(), f"Kafka refused the events: {acks.error.str()}")

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 0.0) -> None:
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
