"""``partition_of`` is where librdkafka puts a message keyed by the same userId (real broker).

Why it matters: during a rolling upgrade, old ingest processes produce v1 messages keyed by
userId (librdkafka's ``consistent_random`` partitioner chooses the partition) while new ones
produce v2 messages to ``partition_of(userId)``. A user's events stay on one partition, hence in
order for one stream worker, only if both agree, for every userId and partition count.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from analytics_platform import event_format, kafka
from ingest.producer import producer_config

pytestmark = [pytest.mark.kafka]


@pytest.mark.parametrize("partitions", [8, 13, 1])
def test_partition_of_matches_librdkafka_for_keyed_messages(kafka_broker: Any, partitions: int) -> None:
    topic = f"partitioner-{partitions}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(kafka.client_config())
    config = {"retention.ms": "600000", "retention.bytes": "-1"}
    for future in admin.create_topics([NewTopic(topic, partitions, 1, config=config)]).values():
        future.result(timeout=30)

    user_ids = [f"user-{uuid.uuid4().hex}" for _ in range(1000)]
    user_ids += ["u", "0", "ü", "用户-42", "user with spaces", "x" * 128, str(uuid.uuid4()).upper()]
    placed: dict[str, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        placed[msg.key().decode()] = msg.partition()

    # The project's producer configuration (partitioner included), as ingest used it for v1.
    producer = Producer(producer_config())
    for user_id in user_ids:
        producer.produce(topic, b'{"v":1}', user_id.encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0

    assert len(placed) == len(user_ids)
    mismatches = {u: (p, event_format.partition_of(u, partitions)) for u, p in placed.items()}
    mismatches = {u: pair for u, pair in mismatches.items() if pair[0] != pair[1]}
    assert mismatches == {}
    if partitions > 1:
        assert len(set(placed.values())) == partitions  # the keys really were spread
