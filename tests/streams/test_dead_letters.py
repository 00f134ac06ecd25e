"""``manage.py dead_letters``: list, count and replay through the real broker, worker and ClickHouse.

The dead letters replayed here hold valid events whose cause was external: ``clickhouse_rejected``
(the server refused the row, then was fixed) and ``processor_error`` (a processor bug, then
fixed). They are produced into the dead-letter topic in the worker's record format, the worker
never having seen their events, as after a real incident whose dedup window has passed. The worker
makes real ``invalid_event`` and ``invalid_json`` dead letters beside them.
"""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from django.core.management import call_command

from analytics_platform import event_format, kafka
from streams import dead_letters
from streams.ledger.models import DeadLetterReplay
from tests.support.simulate import Message

from .conftest import wait_until

pytestmark = [pytest.mark.postgres]

NOW = int(time.time() * 1000)


def _event(user: str, **fields: Any) -> dict[str, Any]:
    ts = NOW - 3_600_000
    return {
        "eventId": str(uuid.uuid4()),
        "type": "app.open",
        "userId": user,
        "timestamp": ts,
        "clientTimestamp": ts,
        "receivedAt": ts,
        **fields,
    }


def _letter(reason: str, payload: bytes, *, stage: str, offset: int, event: dict[str, Any] | None = None) -> bytes:
    record = dead_letters.dead_letter(
        reason,
        f"{reason} (made by the test)",
        payload=payload,
        partition=0,
        offset=offset,
        stage=stage,
        event_id=event["eventId"] if event else None,
        user_id=event["userId"] if event else None,
    )
    return orjson.dumps(record)


def _dlq_produce(values: list[tuple[bytes, int]]) -> None:
    producer = Producer(kafka.client_config(**{"acks": "all"}))
    topic = kafka.topic_name(event_format.EVENTS_DLQ_TOPIC)
    for value, timestamp in values:
        producer.produce(topic, value, b"test", partition=0, timestamp=timestamp)
    assert producer.flush(30) == 0


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("dead_letters", *args, stdout=out)
    return out.getvalue()


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def _sent_ids() -> Counter[str]:
    """How many times each eventId was produced to the events topic (read to its end, no group)."""
    topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    consumer = Consumer(kafka.client_config(**{"group.id": "unused", "enable.partition.eof": True}))
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    ids: Counter[str] = Counter()
    open_partitions, deadline = set(partitions), time.monotonic() + 30
    try:
        while open_partitions and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                open_partitions.discard(message.partition())
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                ids.update(e["eventId"] for e in orjson.loads(message.value()).get("events", ()))
    finally:
        consumer.close()
    assert not open_partitions
    return ids


def _stored(client: Any) -> dict[str, int]:
    return {i: int(n) for i, n in client.execute("SELECT toString(event_id), count() FROM events GROUP BY event_id")}


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.slow  # about a minute: a worker, three replays, two checkpoints waited for
@pytest.mark.django_db(databases=["default", "clickhouse"])
def test_replayed_dead_letters_count_once(stream_env):
    stored_first = _event("user-a")
    refused = _event("user-a", type="Not A Type!")  # the processor refuses it: a real invalid_event
    stream_env.produce(
        [
            Message(
                "user-a", NOW, [stored_first, refused], partition=event_format.partition_of("user-a", 8), version=2
            ),
            Message("user-b", NOW, [], raw=b"{not json", partition=1),  # a real invalid_json
        ]
    )
    rejected = _event("user-c")  # ClickHouse refused its row, two days ago; the worker dead-lettered it twice
    bug_1, bug_2 = _event("user-d"), _event("user-e")  # a message the processor raised on
    bug_message = orjson.dumps({"v": 2, "events": [bug_1, bug_2, stored_first]})
    two_days_ago = NOW - 2 * 86_400_000
    _dlq_produce(
        [
            (
                _letter("clickhouse_rejected", orjson.dumps(rejected), stage="sink", offset=7, event=rejected),
                two_days_ago,
            ),
            (
                _letter("clickhouse_rejected", orjson.dumps(rejected), stage="sink", offset=7, event=rejected),
                two_days_ago,
            ),
            (_letter("processor_error", bug_message, stage="decode", offset=9), NOW),
        ]
    )
    stream_env.worker_start()
    client = stream_env.clickhouse()
    wait_until(lambda: stored_first["eventId"] in _stored(client), timeout=90, what="the valid event stored")
    wait_until(lambda: _command("count").splitlines()[-1].split("\t")[-1] == "5", timeout=30, what="five dead letters")

    # count: by reason, and by day and stage.
    by_reason = {line.split("\t")[0]: line.split("\t")[1] for line in _command("count").splitlines()[1:]}
    assert by_reason == {
        "clickhouse_rejected": "2",
        "invalid_event": "1",
        "invalid_json": "1",
        "processor_error": "1",
        "total": "5",
    }
    day_before = datetime.fromtimestamp(two_days_ago / 1000, tz=UTC).date().isoformat()
    by_day = _command("count", "--by", "day", "--by", "stage").splitlines()
    assert f"{day_before}\tsink\t2" in by_day, by_day

    # list: filters by time and reason; text lines name the reason, field, eventId and positions.
    old = _json_lines(_command("list", "--json", "--until", (datetime.now(UTC) - timedelta(days=1)).isoformat()))
    assert [(d["reason"], d["eventId"], d["dlqOffset"]) for d in old] == [
        ("clickhouse_rejected", rejected["eventId"], 0),
        ("clickhouse_rejected", rejected["eventId"], 1),
    ]
    (line,) = _command("list", "--reason", "invalid_event").splitlines()
    assert "\tinvalid_event\tdecode\tfield=type\t" in line and f"eventId={refused['eventId']}" in line
    assert len(_command("list", "--limit", "3").splitlines()) == 3

    # A dry run changes nothing.
    dry = _json_lines(_command("replay", "--dry-run", "--json"))
    assert sorted(d["eventId"] for d in dry if d["result"] == "would_send") == sorted(
        [rejected["eventId"], bug_1["eventId"], bug_2["eventId"]]
    )
    # --event-id picks events out of a whole-message dead letter too.
    (picked,) = _json_lines(_command("replay", "--dry-run", "--json", "--event-id", bug_1["eventId"].upper()))
    assert (picked["result"], picked["eventId"], picked["reason"]) == (
        "would_send",
        bug_1["eventId"],
        "processor_error",
    )
    assert not DeadLetterReplay.objects.exists()

    # The replay: each event of the fixed causes sent once; nothing else.
    text = _command("replay", "--operator", "ops-test", "--wait", "60")
    assert "stored in ClickHouse within 60s: 3 of 3" in text, text
    assert "dead letters covered (" in text and "[0] 0-" in text, text
    results = {(o.split("\t")[0], o.split("\t")[3]) for o in text.splitlines() if "\tdlq=[" in o}
    assert results == {
        ("sent", f"eventId={rejected['eventId']}"),
        ("duplicate", f"eventId={rejected['eventId']}"),  # the second dead letter of the same event
        ("sent", f"eventId={bug_1['eventId']}"),
        ("sent", f"eventId={bug_2['eventId']}"),
        ("already_stored", f"eventId={stored_first['eventId']}"),  # stored after all: never re-sent
        ("invalid", f"eventId={refused['eventId']}"),  # refused again: reported, not sent
        ("unreadable", "eventId=-"),  # the invalid JSON message
    }, text
    time.sleep(6)  # one more checkpoint of the worker
    counts = _stored(client)
    assert {
        i: counts.get(i) for i in (rejected["eventId"], bug_1["eventId"], bug_2["eventId"], stored_first["eventId"])
    } == {
        rejected["eventId"]: 1,
        bug_1["eventId"]: 1,
        bug_2["eventId"]: 1,
        stored_first["eventId"]: 1,
    }
    assert set(DeadLetterReplay.objects.values_list("status", flat=True)) == {"sent", "already_stored", "invalid"}
    assert set(DeadLetterReplay.objects.values_list("replayed_by", flat=True)) == {"ops-test"}

    # Replayed again: the ledger sends nothing; ClickHouse still holds each event once.
    again = _json_lines(_command("replay", "--json"))
    assert not [d for d in again if d["result"] in ("sent", "would_send")], again
    assert sorted(d["eventId"] for d in again if d["result"] == "already_replayed") == sorted(
        [rejected["eventId"], rejected["eventId"], bug_1["eventId"], bug_2["eventId"], stored_first["eventId"]]
    )
    time.sleep(6)
    assert _stored(client) == counts
    assert len(counts) == 4 and sum(counts.values()) == 4
    # Not only deduplicated downstream (the processor would drop a re-send within its 24 h window,
    # not days later): never re-sent. Each event is in the events topic once, by ingest or by replay.
    produced = _sent_ids()
    assert {i: produced[i] for i in counts} == dict.fromkeys(counts, 1)
    assert produced[refused["eventId"]] == 1
    client.disconnect()


@pytest.mark.django_db(databases=["default"])
def test_two_replays_at_once_cannot_both_claim_an_event():
    """The ledger's conditional unique key decides: one pending-or-sent row per eventId, wherever it sits."""
    from streams import dead_letter_services as services

    event_id = str(uuid.uuid4())

    def outcome(offset: int) -> services.ReplayOutcome:
        return services.ReplayOutcome(0, offset, "clickhouse_rejected", "", event_id, "user-a")

    common = {"dlq_topic": "events-dlq", "topic_id": "t1", "operator": "ops"}
    first = services._claim([outcome(3)], run_id=uuid.uuid4(), **common)
    second = services._claim([outcome(4), outcome(3)], run_id=uuid.uuid4(), **common)
    assert [o.dlq_offset for o in first] == [3]
    assert second == []
    assert DeadLetterReplay.objects.get().status == "pending"
