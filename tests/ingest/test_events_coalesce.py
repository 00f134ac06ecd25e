"""Coalescing through the real broker: concurrent requests share v2 messages, one per partition.

Requests run on threads, each with its own test client, against one process's producer (like the
threads of one gunicorn worker). Every check reads the topic back.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
from django.test import Client

from analytics_platform import kafka
from analytics_platform.devstack import processes
from ingest import producer
from tests.ingest.conftest import (
    TopicReader,
    assert_broker_unavailable,
    body_of,
    event_make,
    events_of,
    expected_partition,
    value_of,
)

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open")]


def post(body: bytes, client: Client | None = None) -> Any:
    return (client or Client()).post("/events", data=body, content_type="application/json")


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` on threads released together; return their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls, timeout=60))


def users_on_partition(partition: int, count: int) -> list[str]:
    users: list[str] = []
    while len(users) < count:
        user = f"user-{uuid.uuid4().hex}"
        if expected_partition(user) == partition:
            users.append(user)
    return users


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.usefixtures("fast_producer")
def test_concurrent_requests_of_several_users_coalesce_into_one_message_per_partition(
    topic_reader: TopicReader, settings: Any
) -> None:
    settings.INGEST_COALESCE_MS = 1000  # wide enough for every request below to join the same buffers
    requests = [[f"user-{uuid.uuid4().hex}" for _ in range(3)] for _ in range(8)]
    bodies = [body_of([event_make(userId=u, positionMs=k) for k in range(3) for u in users]) for users in requests]
    responses = concurrently([partial(post, body) for body in bodies])
    assert [r.status_code for r in responses] == [202] * 8, responses
    assert all(r.json()["accepted"] == 9 for r in responses)

    all_users = {u for users in requests for u in users}
    partitions = {expected_partition(u) for u in all_users}
    messages = topic_reader.messages_for(all_users, expected=len(partitions))
    assert sorted(m.partition() for m in messages) == sorted(partitions)  # exactly one message each
    request_of = {u: i for i, users in enumerate(requests) for u in users}
    assert max(len({request_of[e["userId"]] for e in events_of([m])}) for m in messages) > 1
    for msg in messages:
        assert msg.key() is None
        value = value_of(msg)
        assert value["v"] == 2
        assert all(expected_partition(e["userId"]) == msg.partition() for e in value["events"])
    got = events_of(messages, all_users)
    assert len(got) == 72 and len({e["eventId"] for e in got}) == 72
    for user in all_users:
        assert [e["positionMs"] for e in got if e["userId"] == user] == [0, 1, 2]


@pytest.mark.usefixtures("fast_producer")
def test_every_event_lands_on_the_partition_of_its_user(topic_reader: TopicReader, settings: Any) -> None:
    users = [f"user-{uuid.uuid4().hex}" for _ in range(200)] + [f"usér-ü-{uuid.uuid4().hex}", "u"]
    response = post(body_of([event_make(userId=u) for u in users] + [event_make(userId=u) for u in users]))
    assert response.status_code == 202, response.content
    partitions = {expected_partition(u) for u in users}
    messages = topic_reader.messages_for(set(users), expected=len(partitions), settle=0.5)
    assert len(messages) == len(partitions)
    got = events_of(messages, set(users))
    assert len(got) == 2 * len(users)
    for msg in messages:
        for event in value_of(msg)["events"]:
            assert msg.partition() == expected_partition(event["userId"]), event["userId"]


@pytest.mark.usefixtures("fast_producer")
def test_a_users_events_keep_their_order_across_requests_and_split_messages(
    topic_reader: TopicReader, settings: Any
) -> None:
    settings.INGEST_MAX_MESSAGE_BYTES = 4_000  # a request's events of the user span several messages
    user = f"user-{uuid.uuid4().hex}"
    position = 0
    for _ in range(3):
        events = []
        for _ in range(20):
            events.append(event_make(userId=user, positionMs=position))
            events.append(event_make(positionMs=0))  # other users, interleaved
            position += 1
        response = post(body_of(events))
        assert response.status_code == 202, response.content
    messages = topic_reader.messages_for({user}, expected=6)
    assert len(messages) >= 6  # each request's 20 events of the user (about 7 kB) need two messages
    assert all(len(m.value()) <= 4_000 for m in messages)
    assert {m.partition() for m in messages} == {expected_partition(user)}
    assert [e["positionMs"] for e in events_of(messages, {user})] == list(range(60))


@pytest.mark.usefixtures("fast_producer")
def test_a_full_buffer_is_produced_before_it_outgrows_the_message_limit(
    topic_reader: TopicReader, settings: Any
) -> None:
    settings.INGEST_COALESCE_MS = 1000
    settings.INGEST_MAX_MESSAGE_BYTES = 6_000
    users = users_on_partition(3, 10)
    bodies = [body_of([event_make(userId=u, positionMs=k) for k in range(5)]) for u in users]
    started = time.monotonic()
    responses = concurrently([partial(post, body) for body in bodies])
    assert [r.status_code for r in responses] == [202] * 10
    messages = topic_reader.messages_for(set(users), expected=3)
    assert len(messages) >= 3  # 50 events of about 350 bytes: at least three messages of 6 kB
    assert all(len(m.value()) <= 6_000 and m.partition() == 3 for m in messages)
    assert len(events_of(messages, set(users))) == 50
    for user in users:
        assert [e["positionMs"] for e in events_of(messages, {user})] == list(range(5))
    # Messages filled up went out at once; only the last one waited for the coalescing window.
    assert time.monotonic() - started < 10


@pytest.mark.usefixtures("fast_producer")
def test_coalesce_zero_produces_each_request_at_once(topic_reader: TopicReader, settings: Any) -> None:
    settings.INGEST_COALESCE_MS = 0
    requests = [[f"user-{uuid.uuid4().hex}" for _ in range(20)] for _ in range(4)]
    bodies = [body_of([event_make(userId=u) for u in users]) for users in requests]
    responses = concurrently([partial(post, body) for body in bodies])
    assert [r.status_code for r in responses] == [202] * 4
    all_users = {u for users in requests for u in users}
    expected = sum(len({expected_partition(u) for u in users}) for users in requests)
    messages = topic_reader.messages_for(all_users, expected=expected)
    # Still grouped per partition within a request, never shared between requests.
    assert len(messages) == expected
    for msg in messages:
        users = {e["userId"] for e in events_of([msg])}
        assert any(users <= set(r) for r in requests), users
        assert value_of(msg)["v"] == 2


def test_a_failed_delivery_fails_every_request_of_the_message(settings: Any) -> None:
    broker = processes.broker_start()
    try:
        settings.KAFKA_BOOTSTRAP_SERVERS = broker.address
        # The requests must fail through the delivery report (message timeout), not by giving up.
        settings.INGEST_ACK_TIMEOUT_SECONDS = 30
        settings.INGEST_PRODUCER_EXTRA = {"message.timeout.ms": 2000}
        settings.INGEST_COALESCE_MS = 1000
        kafka.topics_ensure()
        producer.producer_reset()
        metrics = Client()
        assert post(body_of([event_make()])).status_code == 202  # the private broker works...

        broker.stop()  # ...until it is gone
        before = metrics.get("/prometheus/metrics").content.decode()
        users = users_on_partition(5, 4)
        started = time.monotonic()
        bodies = [body_of([event_make(userId=u), event_make(userId=u)]) for u in users]
        responses = concurrently([partial(post, body) for body in bodies])
        elapsed = time.monotonic() - started
        after = metrics.get("/prometheus/metrics").content.decode()
        for response in responses:
            assert_broker_unavailable(response, "Kafka refused the events")  # the delivery report, not a timeout
        # Settled by the delivery report (message timeout 2 s after the 1 s window; slower on a busy
        # machine), never by the request giving up at its 30 s ack timeout.
        assert elapsed < settings.INGEST_ACK_TIMEOUT_SECONDS
        # One message held the four requests' events: one failed delivery report settled them all.
        name = 'ingest_delivery_failures_total{reason="_MSG_TIMED_OUT"}'
        assert sample(after, name) - sample(before, name) == 1
        name = "ingest_events_accepted_total"
        assert sample(after, name) == sample(before, name)
        name = 'ingest_events_rejected_total{reason="broker_unavailable"}'
        assert sample(after, name) - sample(before, name) == 8
    finally:
        broker.kill()
        producer.producer_reset()


def test_no_partition_count_gives_503_with_retry_after(settings: Any) -> None:
    """No broker answers the metadata request: the same 503 as a failed delivery, in bounded time."""
    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{processes.free_port()}"
    settings.INGEST_ACK_TIMEOUT_SECONDS = 1.5
    producer.producer_reset()
    metrics = Client()
    try:
        before = metrics.get("/prometheus/metrics").content.decode()
        started = time.monotonic()
        response = post(body_of([event_make(), event_make()]))
        elapsed = time.monotonic() - started
        after = metrics.get("/prometheus/metrics").content.decode()
        assert_broker_unavailable(response, "partition count")
        # Bounded by the ack timeout, not librdkafka's metadata timeouts (slack for a busy machine).
        assert elapsed < settings.INGEST_ACK_TIMEOUT_SECONDS + 10
        name = 'ingest_delivery_failures_total{reason="metadata_unavailable"}'
        assert sample(after, name) - sample(before, name) == 1
    finally:
        producer.producer_reset()
