"""The events topic's partition count as ingest caches it: refreshed after the trust window, and at once
after an unknown-partition error (real broker, real HTTP, the process's real producer).

Why it matters: v2 messages go to an explicit partition, ``partition_of(userId, count)``. A count
that stays stale after partitions were added leaves the new partitions unused; a count larger than
the topic's makes produce() fail for the users past the end, and must give the client a 503 it can
retry (never a 202), then be re-read so that the retry lands.

Each test uses a topic of its own (``KAFKA_TOPIC_PREFIX``) on the session broker, so that changing
its partitions disturbs no other test.

Tansu 0.6.0 specifics (checked with this build):

* it has no CreatePartitions (librdkafka: ``_UNSUPPORTED_FEATURE``, "requires broker version >=
  1.0.0"); ``partitions_add`` then deletes the topic and creates it again with more partitions,
  which is the same partition count change for the producer, but loses what the topic held, so
  each phase is read back before the next change;
* a metadata request naming a missing topic auto-creates it (4 partitions, no configs), hence the
  retry in ``PrivateTopic.recreate``;
* it acknowledges a produce to a partition the topic does not have, and the record is never
  readable: a request sent while neither librdkafka nor ingest knows that the topic shrank is
  answered 202 and those events are lost (checked: 8 of 12). Kafka answers
  ``UNKNOWN_TOPIC_OR_PARTITION`` instead, after which librdkafka re-reads its metadata and fails
  the message with ``_UNKNOWN_PARTITION`` in its delivery report. So on Tansu the unknown-partition
  error only happens once librdkafka's own metadata shows the smaller count: the tests make the
  process's producer re-read it (what ``topic.metadata.refresh.interval.ms`` does on its own),
  before produce() (the error is raised by produce()) or while the messages wait in librdkafka's
  queue (the error comes in the delivery report, as on Kafka).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic
from django.test import Client

from analytics_platform import event_format, kafka
from ingest import producer
from tests.ingest.conftest import TopicReader, assert_broker_unavailable, body_of, event_make

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer")]

TOPIC_CONFIG = {"retention.ms": "600000", "retention.bytes": "-1", "cleanup.policy": "delete"}


class PrivateTopic:
    """This test's events topic, whose partition count the test changes."""

    def __init__(self, admin: AdminClient, name: str) -> None:
        self.admin = admin
        self.name = name

    def count(self) -> int:
        # All topics: a metadata request naming a missing topic would make Tansu create it.
        topic = self.admin.list_topics(timeout=10).topics.get(self.name)
        return 0 if topic is None else len(topic.partitions)

    def create(self, partitions: int) -> None:
        for future in self.admin.create_topics([NewTopic(self.name, partitions, 1, config=TOPIC_CONFIG)]).values():
            future.result(timeout=10)

    def delete(self) -> None:
        for future in self.admin.delete_topics([self.name], operation_timeout=10).values():
            try:
                future.result(timeout=10)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise

    def recreate(self, partitions: int) -> None:
        """Delete the topic and create it again with ``partitions`` (what it held is lost)."""
        for _ in range(5):
            self.delete()
            try:
                self.create(partitions)
            except KafkaException as exc:  # a metadata request auto-created it in between: again
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                continue
            break
        assert self.count() == partitions

    def partitions_add(self, partitions: int) -> None:
        """Grow the topic to ``partitions``: CreatePartitions, or a new topic where it is unsupported."""
        try:
            for future in self.admin.create_partitions([NewPartitions(self.name, partitions)]).values():
                future.result(timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._UNSUPPORTED_FEATURE:
                raise
            self.recreate(partitions)  # Tansu 0.6.0
        assert self.count() == partitions


@pytest.fixture
def private_topic(settings: Any, fast_producer: Any) -> Iterator[PrivateTopic]:
    settings.KAFKA_TOPIC_PREFIX = f"parts-{uuid.uuid4().hex[:12]}-"
    topic = PrivateTopic(AdminClient(kafka.client_config()), kafka.topic_name(event_format.EVENTS_TOPIC))
    yield topic
    producer.producer_reset()  # no later metadata request may recreate the topic
    topic.delete()


def post(client: Client, events: list[dict[str, Any]]) -> Any:
    return client.post("/events", data=body_of(events), content_type="application/json")


def users_covering(partitions: int, per_partition: int) -> list[str]:
    """``per_partition`` users for each partition of a ``partitions``-partition topic."""
    by_partition: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(users) < per_partition for users in by_partition.values()):
        user = f"user-{uuid.uuid4().hex}"
        users = by_partition[event_format.partition_of(user, partitions)]
        if len(users) < per_partition:
            users.append(user)
    return [user for users in by_partition.values() for user in users]


def read_back(event_ids: set[str], *, timeout: float = 10.0, settle: float = 0.5) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) of every copy of ``event_ids`` on the topic, waiting until each id is seen.

    Reads every partition of the topic as it is now, then ``settle`` s more for extra copies.
    """
    reader = TopicReader()
    try:
        found: list[tuple[int, dict[str, Any]]] = []
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while time.monotonic() < (settle_until or deadline):
            if settle_until is None and seen >= event_ids:
                settle_until = time.monotonic() + settle
            msg = reader.consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            for event in msgspec.json.decode(msg.value())["events"]:
                if event["eventId"] in event_ids:
                    found.append((msg.partition(), event))
                    seen.add(event["eventId"])
        assert seen == event_ids, f"{len(event_ids - seen)} of {len(event_ids)} events never reached the topic"
        return found
    finally:
        reader.close()


def assert_once_each_on(found: list[tuple[int, dict[str, Any]]], events: list[dict[str, Any]], partitions: int) -> None:
    """Every event of ``events`` is on the topic exactly once, on ``partition_of(userId, partitions)``."""
    assert sorted(e["eventId"] for _, e in found) == sorted(e["eventId"] for e in events)
    misplaced = [
        (e["userId"], p, event_format.partition_of(e["userId"], partitions))
        for p, e in found
        if p != event_format.partition_of(e["userId"], partitions)
    ]
    assert misplaced == []


def assert_refused_then_retry_lands(client: Client, response: Any, events: list[dict[str, Any]], reason: str) -> None:
    """``response`` is the API's 503 for ``events``; the client's retry, at once, is accepted and lands.

    The topic had 6 partitions when the producer cached the count and has 2 now.
    """
    assert_broker_unavailable(response, reason)

    # The client's retry, at once (600 s before the window would end): the count was read again.
    response = post(client, events)
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == len(events)

    # Every event is on the topic. The retry put each on crc32(userId) % 2; the refused request
    # may have left copies of its events for partitions 0-1 (same eventIds: deduplicated
    # downstream), on crc32(userId) % 6, and nowhere else.
    found = read_back({e["eventId"] for e in events})
    for event in events:
        user = event["userId"]
        copies = sorted(p for p, e in found if e["eventId"] == event["eventId"])
        new, old = event_format.partition_of(user, 2), event_format.partition_of(user, 6)
        assert copies in ([new], sorted([new, old])), (user, copies, new, old)
        if old >= 2:
            assert copies == [new]


def test_added_partitions_are_used_after_the_trust_window_and_no_event_is_lost(
    client: Client, private_topic: PrivateTopic, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = 4.0
    monkeypatch.setattr(producer, "METADATA_MAX_AGE_SECONDS", window)
    private_topic.create(4)
    users = users_covering(6, 2)  # 2 users on each partition of the grown topic, 4 and 5 included
    assert any(event_format.partition_of(u, 4) != event_format.partition_of(u, 6) for u in users)

    # 4 partitions: the first request reads the count, trusted for ``window`` s from now on.
    first = [event_make(userId=user) for user in users]
    posted = time.monotonic()
    response = post(client, first)
    trusted_until = time.monotonic() + window  # at the latest; from ``posted + window`` at the earliest
    assert response.status_code == 202, response.content
    assert_once_each_on(read_back({e["eventId"] for e in first}, settle=0.2), first, 4)

    private_topic.partitions_add(6)

    # Within the window the cached count still holds: the users stay where they were (nothing is
    # lost: partitions 0-3 still exist).
    within = [event_make(userId=user) for user in users]
    assert time.monotonic() < posted + window, "too slow to post within the trust window"
    response = post(client, within)
    assert response.status_code == 202, response.content

    # After the window the count is read again: the users move to crc32(userId) % 6.
    time.sleep(max(0.0, trusted_until - time.monotonic()) + 0.05)
    after = [event_make(userId=user) for user in users]
    response = post(client, after)
    assert response.status_code == 202, response.content
    later = [event_make(userId=user) for user in users]  # and keep going there
    response = post(client, later)
    assert response.status_code == 202, response.content

    found = read_back({e["eventId"] for e in within + after + later})
    ids_within = {e["eventId"] for e in within}
    assert_once_each_on([(p, e) for p, e in found if e["eventId"] in ids_within], within, 4)
    assert_once_each_on([(p, e) for p, e in found if e["eventId"] not in ids_within], after + later, 6)
    assert {p for p, e in found if e["eventId"] not in ids_within} == set(range(6))  # 4 and 5 are in use


def test_unknown_partition_at_produce_gives_503_and_the_count_is_read_again_at_once(
    client: Client, private_topic: PrivateTopic, monkeypatch: pytest.MonkeyPatch
) -> None:
    # librdkafka knows the topic has fewer partitions than ingest's cached count: produce() itself
    # refuses the messages past the end (``_UNKNOWN_PARTITION``).
    monkeypatch.setattr(producer, "METADATA_MAX_AGE_SECONDS", 600.0)  # only the error can refresh it
    private_topic.create(6)
    users = users_covering(6, 2)  # users on partitions 2-5 are past the end of a 2-partition topic
    response = post(client, [event_make(userId=user) for user in users])
    assert response.status_code == 202, response.content  # 6 partitions, now cached

    private_topic.recreate(2)
    # librdkafka re-reads its metadata on its own (topic.metadata.refresh.interval.ms, a broker
    # error); done here at once, through the process's producer: ingest's cached count stays 6.
    metadata = producer.producer_get()._producer.list_topics(private_topic.name, timeout=10)
    assert len(metadata.topics[private_topic.name].partitions) == 2

    events = [event_make(userId=user) for user in users]
    response = post(client, events)
    assert_refused_then_retry_lands(client, response, events, "Unable to produce message: Local: Unknown partition")


def test_unknown_partition_delivery_report_gives_503_and_the_count_is_read_again_at_once(
    client: Client, private_topic: PrivateTopic, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    # librdkafka learns that the topic shrank while the messages wait in its queue: it fails those
    # past the end in their delivery report (what it does on Kafka after the broker answered
    # UNKNOWN_TOPIC_OR_PARTITION and the metadata it then read shows fewer partitions).
    monkeypatch.setattr(producer, "METADATA_MAX_AGE_SECONDS", 600.0)
    linger = 2.0  # how long the messages wait in librdkafka's queue
    settings.INGEST_PRODUCER_LINGER_MS = int(linger * 1000)
    private_topic.create(6)
    users = users_covering(6, 2)
    response = post(client, [event_make(userId=user) for user in users])
    assert response.status_code == 202, response.content

    private_topic.recreate(2)
    events = [event_make(userId=user) for user in users]
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(post, Client(), events)
        event_producer = producer.producer_get()
        while len(event_producer) < 6 and time.monotonic() < started + linger / 2:
            time.sleep(0.01)
        assert len(event_producer) == 6  # one message per partition, all still queued
        metadata = event_producer._producer.list_topics(private_topic.name, timeout=10)
        assert len(metadata.topics[private_topic.name].partitions) == 2
        assert time.monotonic() < started + linger, "too slow: the messages left the queue before"
        response = pending.result(timeout=30)
    assert_refused_then_retry_lands(client, response, events, "Kafka refused the events: Local: Unknown partition")
