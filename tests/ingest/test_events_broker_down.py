"""Never 202 for events Kafka did not acknowledge: a stopped broker gives 503 + Retry-After."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from analytics_platform import kafka
from analytics_platform.devstack import processes
from ingest import producer
from tests.ingest.conftest import body_of, event_make

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open")]


def test_stopped_broker_gives_503_with_retry_after_and_nothing_accepted(client: Client, settings: Any) -> None:
    broker = processes.broker_start()
    try:
        settings.KAFKA_BOOTSTRAP_SERVERS = broker.address
        settings.INGEST_PRODUCER_LINGER_MS = 5
        settings.INGEST_ACK_TIMEOUT_SECONDS = 2.0
        kafka.topics_ensure()
        producer.producer_reset()
        response = client.post("/events", data=body_of([event_make()]), content_type="application/json")
        assert response.status_code == 202, response.content  # the private broker works...

        broker.stop()  # ...until it is gone
        for _ in range(3):
            started = time.monotonic()
            response = client.post(
                "/events", data=body_of([event_make(), event_make()]), content_type="application/json"
            )
            elapsed = time.monotonic() - started
            assert response.status_code == 503, response.content
            assert int(response["Retry-After"]) > 0
            body = response.json()
            assert body["error"]["code"] == "broker_unavailable"
            assert body["accepted"] == 0
            assert elapsed < settings.INGEST_ACK_TIMEOUT_SECONDS + 1.5  # bounded wait
    finally:
        broker.kill()
        producer.producer_reset()
