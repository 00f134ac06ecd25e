"""Never 202 for events Kafka did not acknowledge: a stopped broker gives 503 + Retry-After."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from analytics_platform import kafka
from analytics_platform.devstack import processes
from ingest import producer
from tests.ingest.conftest import assert_broker_unavailable, body_of, event_make, expected_partition


def users_on_distinct_partitions(count: int) -> list[str]:
    by_partition: dict[int, str] = {}
    while len(by_partition) < count:
        user = f"user-{time.monotonic_ns()}-{len(by_partition)}"
        by_partition.setdefault(expected_partition(user), user)
    return list(by_partition.values())


pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open")]


def test_stopped_broker_gives_503_with_retry_after_and_nothing_accepted(client: Client, settings: Any) -> None:
    broker = processes.broker_start()
    try:
        settings.KAFKA_BOOTSTRAP_SERVERS = broker.address
        settings.INGEST_ACK_TIMEOUT_SECONDS = 1.5
        kafka.topics_ensure()
        producer.producer_reset()
        response = client.post("/events", data=body_of([event_make()]), content_type="application/json")
        assert response.status_code == 202, response.content  # the private broker works...

        broker.stop()  # ...until it is gone
        for _ in range(2):  # and again: a failed request leaves nothing that makes the next one pass
            started = time.monotonic()
            response = client.post(
                "/events", data=body_of([event_make(), event_make()]), content_type="application/json"
            )
            elapsed = time.monotonic() - started
            assert_broker_unavailable(response)
            # Bounded by the ack timeout, not librdkafka's minutes-long message timeout (slack for a
            # busy machine).
            assert elapsed < settings.INGEST_ACK_TIMEOUT_SECONDS + 10
    finally:
        broker.kill()
        producer.producer_reset()


def test_full_producer_queue_gives_503_not_202(client: Client, settings: Any, kafka_broker: Any) -> None:
    # Room for one message: a batch of users on two partitions (two messages) cannot fit.
    settings.INGEST_PRODUCER_QUEUE_MESSAGES = 1
    settings.INGEST_PRODUCER_LINGER_MS = 200
    producer.producer_reset()
    try:
        events = [event_make(userId=user) for user in users_on_distinct_partitions(2)]
        response = client.post("/events", data=body_of(events), content_type="application/json")
        assert_broker_unavailable(response, "queue is full")
    finally:
        producer.producer_reset()
