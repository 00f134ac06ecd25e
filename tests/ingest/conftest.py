"""Helpers for the ingest tests: event factories, a topic reader, producer isolation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from django.conf import settings

from analytics_platform import event_format, kafka
from ingest import allowlist, producer


def event_make(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "type": "heartbeat",
        "userId": f"user-{uuid.uuid4().hex[:12]}",
        "sessionId": f"session-{uuid.uuid4().hex[:12]}",
        "videoId": "video-42",
        "timestamp": int(time.time() * 1000),
        "positionMs": 12_000,
        "bitrateKbps": 4500,
        "device": "desktop",
        "country": "FR",
    }
    event.update(overrides)
    return {k: v for k, v in event.items() if v is not ...}


def body_of(events: list[Any], **top: Any) -> bytes:
    return msgspec.json.encode({**top, "events": events})


def assert_broker_unavailable(response: Any, message_part: str = "") -> None:
    """The API's answer when Kafka did not take the events: 503, Retry-After, nothing accepted."""
    assert response.status_code == 503, response.content
    assert int(response["Retry-After"]) > 0
    body = msgspec.json.decode(response.content)
    assert body["error"]["code"] == "broker_unavailable"
    assert message_part in body["error"]["message"]
    assert body["accepted"] == 0


def expected_partition(user_id: str, partitions: int | None = None) -> int:
    # librdkafka's consistent partitioner: crc32 of the key modulo the partition count (checked
    # against the real partitioner in test_partitioning.py).
    return event_format.partition_of(user_id, partitions or settings.KAFKA_DEFAULT_PARTITIONS)


def value_of(msg: Any) -> dict[str, Any]:
    return msgspec.json.decode(msg.value())


def events_of(messages: Iterable[Any], user_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """The events of ``messages`` in order (of ``user_ids`` only, when given)."""
    return [e for m in messages for e in value_of(m)["events"] if user_ids is None or e["userId"] in user_ids]


class TopicReader:
    """Reads the whole events topic from the beginning (assign, no group join: fast on Tansu)."""

    def __init__(self) -> None:
        self.topic = kafka.topic_name(event_format.EVENTS_TOPIC)
        self.consumer = Consumer(
            kafka.client_config(
                **{"group.id": f"test-{uuid.uuid4().hex}", "enable.auto.commit": False, "auto.offset.reset": "earliest"}
            )
        )
        metadata = self.consumer.list_topics(self.topic, timeout=10)
        partitions = metadata.topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])

    def messages_for(
        self, user_ids: set[str], *, expected: int, settle: float = 1.0, timeout: float = 20.0
    ) -> list[Any]:
        """Messages holding an event of one of ``user_ids``, in (partition, offset) order.

        Waits for ``expected`` messages, then ``settle`` s more for extras (a message produced twice).
        """
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < deadline:
            if settle_until is None and len(found) >= expected:
                settle_until = time.monotonic() + settle
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            value = msgspec.json.decode(msg.value())
            if any(e.get("userId") in user_ids for e in value.get("events", ())):
                found.append(msg)
        return sorted(found, key=lambda m: (m.partition(), m.offset()))

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def topic_reader(kafka_broker: Any) -> Iterator[TopicReader]:
    reader = TopicReader()
    yield reader
    reader.close()


@pytest.fixture
def ingest_open(settings: Any) -> Any:
    """No allowlist and no rate limit: for tests about validation and Kafka, not access control."""
    settings.INGEST_ALLOWLIST_ENABLED = False
    settings.INGEST_RATE_LIMIT_REQUESTS = 0
    return settings


@pytest.fixture
def fast_producer(settings: Any, kafka_broker: Any) -> Iterator[Any]:
    """A producer bound to the session broker, rebuilt for the test's settings."""
    producer.producer_reset()
    yield settings
    producer.producer_reset()


@pytest.fixture(autouse=True)
def _fresh_allowlist_cache() -> Iterator[None]:
    allowlist.rules_invalidate()
    yield
    allowlist.rules_invalidate()
