"""Kafka and schema-registry client configuration and the topics this service owns, in one place.

Topics are created explicitly (partitions, replication, retention) rather than auto-created:
auto-created topics get broker defaults, and the local Tansu broker answers DescribeConfigs with
``{}`` for them, which breaks Quix Streams' stateful operators.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings

from analytics_platform import event_format

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient


def client_config(**overrides: Any) -> dict[str, Any]:
    """Base librdkafka config: bootstrap servers plus the TLS/SASL options from the environment."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        # librdkafka's own log lines go through stdlib logging, hence out as JSON like the rest.
        "logger": logging.getLogger("kafka.librdkafka"),
        **settings.KAFKA_SECURITY,
    }
    config.update(overrides)
    return config


def schema_registry_client(**overrides: Any) -> SchemaRegistryClient:
    """confluent-kafka's client for the registry at ``SCHEMA_REGISTRY_URL`` (auth and TLS from settings)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient  # httpx and authlib: only where used

    config: dict[str, Any] = {"timeout": settings.SCHEMA_REGISTRY_TIMEOUT_SECONDS, **settings.SCHEMA_REGISTRY_CLIENT}
    config.update(overrides)
    return SchemaRegistryClient(config)


def topic_name(base: str) -> str:
    return f"{settings.KAFKA_TOPIC_PREFIX}{base}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int | None = None  # None: settings.KAFKA_DEFAULT_PARTITIONS
    config: dict[str, str] = field(default_factory=dict)


def topic_specs() -> list[TopicSpec]:
    """Every topic the service reads or writes. Stream and derived-event topics add themselves here."""
    retention = str(settings.KAFKA_RETENTION_MS)
    base = {"retention.ms": retention, "retention.bytes": "-1", "cleanup.policy": "delete"}
    return [
        TopicSpec(topic_name(event_format.EVENTS_TOPIC), config=base),
        TopicSpec(topic_name(event_format.EVENTS_DLQ_TOPIC), config=base),
        TopicSpec(topic_name(event_format.VIDEO_WATCHED_TOPIC), config=base),
        TopicSpec(topic_name(event_format.VIDEO_ERROR_TOPIC), config=base),
    ]


def topics_ensure(*, timeout: float = 30.0, admin: AdminClient | None = None) -> list[str]:
    """Create the missing topics; return the names created. Existing topics are left as they are."""
    admin = admin or AdminClient(client_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions or settings.KAFKA_DEFAULT_PARTITIONS,
            replication_factor=settings.KAFKA_REPLICATION_FACTOR,
            config=spec.config,
        )
        for spec in topic_specs()
        if spec.name not in existing
    ]
    if not wanted:
        return []
    for future in admin.create_topics(wanted, operation_timeout=timeout).values():
        future.result(timeout=timeout)
    return [topic.topic for topic in wanted]
