"""POST /events through the real broker: what is acknowledged is on the topic, once, where it belongs."""

from __future__ import annotations

import gzip
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from django.test import Client

from tests.ingest.conftest import TopicReader, body_of, event_make, events_of, expected_partition

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer")]


def post(client: Client, body: bytes, **headers: Any) -> Any:
    return client.post("/events", data=body, content_type=headers.pop("content_type", "application/json"), **headers)


def test_valid_batch_is_on_the_topic_once_per_event_in_v2_messages_partitioned_by_user(
    client: Client, topic_reader: TopicReader
) -> None:
    users = [f"user-{uuid.uuid4().hex}" for _ in range(5)]
    events = [event_make(userId=users[i % 5], type="heartbeat", positionMs=i) for i in range(50)]
    before = int(time.time() * 1000)
    response = post(client, body_of(events))
    after = int(time.time() * 1000)
    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 50, "rejected": 0, "errors": []}

    partitions = {expected_partition(user) for user in users}
    messages = topic_reader.messages_for(set(users), expected=len(partitions))
    # One v2 message per partition the request touched, nothing produced twice.
    assert sorted(m.partition() for m in messages) == sorted(partitions)
    seen: dict[str, dict[str, Any]] = {}
    for msg in messages:
        assert msg.key() is None
        value = msgspec.json.decode(msg.value())
        assert set(value) == {"v", "events"}
        assert value["v"] == 2
        for event in value["events"]:
            assert event["userId"] in users
            assert msg.partition() == expected_partition(event["userId"])
            assert before <= event["receivedAt"] <= after
            assert event["eventId"] not in seen
            seen[event["eventId"]] = event
    assert set(seen) == {e["eventId"] for e in events}
    # A user's events keep the request's order.
    for user in users:
        positions = [e["positionMs"] for e in events_of(messages, {user})]
        assert positions == sorted(positions) and len(positions) == 10


def test_event_is_normalised_as_event_format_documents(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    upper_id = str(uuid.uuid4()).upper()
    # An hour ago, written in +01:00 (inside the accepted window, whatever today is).
    recent_ms = (int(time.time()) - 3600) * 1000 + 678
    local = datetime.fromtimestamp(recent_ms / 1000, timezone(timedelta(hours=1)))
    recent = local.isoformat(timespec="milliseconds")
    assert recent.endswith(".678+01:00")
    events = [
        event_make(
            eventId=upper_id, userId=user, type="error", errorCode="E42", errorMessage="decoder", unknownField=1
        ),
        event_make(userId=user, type="ui.like_clicked", sessionId=..., videoId=..., timestamp=recent),
    ]
    response = post(client, body_of(events))
    assert response.status_code == 202, response.content
    [msg] = topic_reader.messages_for({user}, expected=1)
    first, second = msgspec.json.decode(msg.value())["events"]
    assert first["eventId"] == upper_id.lower()
    assert first["fatal"] is True  # default for error events
    assert "unknownField" not in first  # unknown fields are accepted and dropped
    assert first["timestamp"] == first["clientTimestamp"] == events[0]["timestamp"]  # no sentAt: no correction
    assert second["type"] == "ui.like_clicked"
    assert "sessionId" not in second and "fatal" not in second
    assert second["clientTimestamp"] == recent_ms


def test_sent_at_corrects_the_client_clock(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    skew_ms = 3_600_000  # the client's clock is one hour ahead
    client_now = int(time.time() * 1000) + skew_ms
    events = [
        event_make(userId=user, timestamp=client_now - 5000),
        event_make(userId=user, timestamp=client_now - 1000),
    ]
    response = post(client, body_of(events, sentAt=client_now))
    assert response.status_code == 202, response.content
    [msg] = topic_reader.messages_for({user}, expected=1)
    value = msgspec.json.decode(msg.value())
    received = value["events"][0]["receivedAt"]
    for sent, got in zip(events, value["events"], strict=True):
        assert got["receivedAt"] == received  # one request, one receive time
        assert got["clientTimestamp"] == sent["timestamp"]
        assert got["timestamp"] == received - (client_now - sent["timestamp"])
    assert abs(value["events"][1]["timestamp"] - (int(time.time() * 1000) - 1000)) < 5000


def test_invalid_events_are_reported_by_index_and_never_produced(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    bad = [
        (event_make(userId=user, eventId="not-a-uuid"), "eventId", "invalid_uuid"),
        (event_make(userId=user, type="View Start"), "type", "unknown_type"),
        (event_make(userId=user, sessionId=...), "sessionId", "required"),
        (event_make(userId=user, videoId=...), "videoId", "required"),
        (event_make(userId=user, eventId=...), "eventId", "required"),
        (event_make(userId=user, timestamp="yesterday"), "timestamp", "invalid_timestamp"),
        (event_make(userId=user, timestamp="2026-01-01T00:00:00"), "timestamp", "invalid_timestamp"),
        (event_make(userId=user, positionMs="12"), "positionMs", "invalid_type"),
        (event_make(userId=user, positionMs=-1), "positionMs", "out_of_range"),
        (event_make(userId=user, fatal="yes"), "fatal", "invalid_type"),
        (event_make(userId=user, sessionId="s" * 129), "sessionId", "too_long"),
        (event_make(userId=user, videoId="v" * 257), "videoId", "too_long"),
        (event_make(userId="u" * 129), "userId", "too_long"),
        (event_make(userId=""), "userId", "too_short"),
        (event_make(userId=user, properties={f"k{i}": i for i in range(65)}), "properties", "properties_too_large"),
        (event_make(userId=user, properties=[1]), "properties", "invalid_type"),
        ("not an object", None, "invalid_type"),
    ]
    good = event_make(userId=user)
    events = [good] + [event for event, _, _ in bad]
    response = post(client, body_of(events))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["accepted"] == 1
    assert body["rejected"] == len(bad)
    got = [(e["index"], e["field"], e["code"]) for e in body["errors"]]
    assert got == [(i + 1, field, code) for i, (_, field, code) in enumerate(bad)]
    assert all(isinstance(e["message"], str) and e["message"] for e in body["errors"])
    messages = topic_reader.messages_for({user}, expected=1)
    assert len(messages) == 1
    assert [e["eventId"] for e in msgspec.json.decode(messages[0].value())["events"]] == [good["eventId"]]


def test_duplicates_inside_a_batch_count_once(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    a, b = event_make(userId=user), event_make(userId=user)
    response = post(client, body_of([a, b, dict(a), dict(a, positionMs=99)]))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(2, "duplicate"), (3, "duplicate")]
    [msg] = topic_reader.messages_for({user}, expected=1)
    ids = [e["eventId"] for e in msgspec.json.decode(msg.value())["events"]]
    assert ids == [a["eventId"], b["eventId"]]


def test_gzip_body_is_accepted(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    events = [event_make(userId=user) for _ in range(10)]
    response = post(client, gzip.compress(body_of(events)), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 10
    [msg] = topic_reader.messages_for({user}, expected=1)
    assert len(msgspec.json.decode(msg.value())["events"]) == 10


def test_a_large_user_batch_is_split_to_fit_the_broker(client: Client, topic_reader: TopicReader, settings) -> None:
    # The user's events do not fit one message: they are spread, in order, over several.
    settings.INGEST_MAX_MESSAGE_BYTES = 20_000
    user = f"user-{uuid.uuid4().hex}"
    events = [event_make(userId=user, properties={"blob": "x" * 500}) for _ in range(100)]
    response = post(client, body_of(events))
    assert response.status_code == 202, response.content
    messages = topic_reader.messages_for({user}, expected=4)
    assert len(messages) >= 4
    assert all(len(m.value()) <= 20_000 for m in messages)
    ids = [e["eventId"] for e in events_of(messages)]
    assert ids == [e["eventId"] for e in events]
    assert {m.partition() for m in messages} == {expected_partition(user)}


def test_prometheus_counts_accepted_rejected_latency_and_queue(client: Client, topic_reader: TopicReader) -> None:
    def sample(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    before = client.get("/prometheus/metrics").content.decode()
    events = [event_make(), event_make(), event_make(eventId="bad"), event_make(type="NOPE")]
    assert post(client, body_of(events)).status_code == 202
    after = client.get("/prometheus/metrics").content.decode()
    assert sample(after, "ingest_events_accepted_total") - sample(before, "ingest_events_accepted_total") == 2
    for reason in ("invalid_uuid", "unknown_type"):
        name = f'ingest_events_rejected_total{{reason="{reason}"}}'
        assert sample(after, name) - sample(before, name) == 1
    name = 'ingest_request_duration_seconds_count{status="202"}'
    assert sample(after, name) - sample(before, name) == 1
    name = 'ingest_requests_total{code="accepted",status="202"}'
    assert sample(after, name) - sample(before, name) == 1
    assert "ingest_producer_queue_messages" in after
    # Both accepted events went to Kafka in at most two messages (their users' partitions).
    count = sample(after, "ingest_events_per_message_count") - sample(before, "ingest_events_per_message_count")
    total = sample(after, "ingest_events_per_message_sum") - sample(before, "ingest_events_per_message_sum")
    assert (total, count) in {(2, 1), (2, 2)}
    assert "ingest_delivery_failures_total" in after or "ingest_delivery_failures" in after


def test_chunked_body_without_content_length(client: Client, topic_reader: TopicReader) -> None:
    import io

    user = f"user-{uuid.uuid4().hex}"
    body = body_of([event_make(userId=user), event_make(userId=user)])
    response = client.generic(
        "POST",
        "/events",
        data=b"",
        content_type="application/json",
        **{"wsgi.input": io.BytesIO(body), "HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_TYPE": "application/json"},  # type: ignore[arg-type]
    )
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 2
    assert len(topic_reader.messages_for({user}, expected=1)) == 1


def test_an_event_too_large_for_a_kafka_message_is_rejected_alone(
    client: Client, topic_reader: TopicReader, settings
) -> None:
    settings.INGEST_MAX_MESSAGE_BYTES = 5_000
    user = f"user-{uuid.uuid4().hex}"
    events = [
        event_make(userId=user),
        event_make(userId=user, properties={"blob": "x" * 6_000}),
        event_make(userId=user),
    ]
    response = post(client, body_of(events))
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, "too_large")]
    messages = topic_reader.messages_for({user}, expected=1)
    ids = [e["eventId"] for m in messages for e in msgspec.json.decode(m.value())["events"]]
    assert ids == [events[0]["eventId"], events[2]["eventId"]]
