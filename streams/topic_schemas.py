"""Every topic's value contract, in the schema registry; the derived events' Avro serializers.

Subjects follow Confluent's default ``TopicNameStrategy``: ``<topic>-value``, with the topic's full
name (``KAFKA_TOPIC_PREFIX`` included), so any Confluent client finds them with no configuration.

=====================  =======  ===============================================================
topic                  type     schema
=====================  =======  ===============================================================
``video-watched``      AVRO     ``streams/schemas/video_watched.avsc``
``video-error``        AVRO     ``streams/schemas/video_error.avsc``
``events``             JSON     generated from the processor's own decoding types
                                (``streams.processors.decoding``): what the worker accepts is
                                what the registry says, by construction
=====================  =======  ===============================================================

Why the raw ``events`` topic keeps plain JSON values (no magic byte, no Avro) with its JSON Schema
registered as the contract: ingest's hot path encodes each accepted event once with orjson and
splices the bytes into batch messages; Avro would add a per-event encode in Python on the web
process and a decode in the worker, where msgspec decodes and checks the whole JSON message in
C. ``bench/bench_derived_serialization.py`` measures both encodings of the same events.

Evolution: ``schemas_register`` (``manage.py schemas_register``, run by the dev stack before the
worker starts and by the deploy's migrate Job) checks every schema against the registry's
compatibility rules (BACKWARD by default) before it registers any, so an incompatible change
stops the release before anything is produced with it. The worker never registers: its
serializers look their schema up (``auto.register.schemas`` off) and it refuses to start when one
is missing (``derived_serializers``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from analytics_platform import event_format, kafka

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
SUBJECT_SUFFIX = "-value"  # TopicNameStrategy, for message values


@cache
def events_json_schema() -> str:
    """The JSON Schema of the ``events`` topic's values, from the decoder's msgspec types.

    Batch and per-user messages (``_MessageIn``) or ticks (``event_format``); docstrings and
    titles are dropped so that rewording a comment is not a contract change.
    """
    import msgspec

    from streams.processors import decoding

    generated = msgspec.json.schema(decoding._MessageIn)

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("title", "description")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "A message of the events topic (analytics_platform/event_format.py): events or a tick.",
        "anyOf": [
            {"$ref": generated["$ref"]},
            {
                "type": "object",
                "properties": {"v": {"const": event_format.MESSAGE_VERSION}, "tick": {"type": "integer"}},
                "required": ["v", "tick"],
            },
        ],
        "$defs": strip(generated["$defs"]),
    }
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class TopicSchema:
    topic: str  # base name, event_format's
    schema_type: str  # "AVRO" or "JSON"
    source: Callable[[], str]

    @property
    def topic_name(self) -> str:
        return kafka.topic_name(self.topic)

    @property
    def subject(self) -> str:
        return self.topic_name + SUBJECT_SUFFIX

    def schema(self) -> Schema:
        # Stripped as AvroSerializer strips its own copy, so that both look up one cache entry.
        return Schema(self.source().strip(), schema_type=self.schema_type)


def _avsc(name: str) -> Callable[[], str]:
    return (SCHEMAS_DIR / name).read_text


TOPIC_SCHEMAS = (
    TopicSchema(event_format.EVENTS_TOPIC, "JSON", events_json_schema),
    TopicSchema(event_format.VIDEO_WATCHED_TOPIC, "AVRO", _avsc("video_watched.avsc")),
    TopicSchema(event_format.VIDEO_ERROR_TOPIC, "AVRO", _avsc("video_error.avsc")),
)
DERIVED = {s.topic: s for s in TOPIC_SCHEMAS if s.schema_type == "AVRO"}


class SchemaRefusedError(Exception):
    """A schema the registry refuses (incompatible with a registered version, or invalid)."""


@dataclass(frozen=True)
class Registration:
    subject: str
    schema_id: int
    version: int | None


def schemas_register(*, client: SchemaRegistryClient | None = None, check_only: bool = False) -> list[Registration]:
    """Check every topic schema against the registry, then register them all; nothing on a refusal.

    ``check_only``: check, register nothing, return the registrations that already exist.
    Raises ``SchemaRefusedError`` naming each refused subject with the registry's reasons.
    """
    client = client or kafka.schema_registry_client()
    refused: list[str] = []
    for topic_schema in TOPIC_SCHEMAS:
        try:
            compatible = client.test_compatibility_all_versions(
                topic_schema.subject, topic_schema.schema(), verbose=True
            )
        except SchemaRegistryError as exc:
            refused.append(f"{topic_schema.subject}: {exc.error_message} (error_code {exc.error_code})")
            continue
        if not compatible:
            refused.append(f"{topic_schema.subject}: {_refusal_reason(client, topic_schema)}")
    if refused:
        raise SchemaRefusedError("schemas refused by the registry:\n  " + "\n  ".join(refused))
    registrations = []
    for topic_schema in TOPIC_SCHEMAS:
        if check_only:
            try:
                found = client.lookup_schema(topic_schema.subject, topic_schema.schema())
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404:
                    raise
                continue
        else:
            found = client.register_schema_full_response(topic_schema.subject, topic_schema.schema())
        registrations.append(Registration(topic_schema.subject, int(found.schema_id or 0), found.version))
    return registrations


def _refusal_reason(client: SchemaRegistryClient, topic_schema: TopicSchema) -> str:
    """The registry's own reasons: a registration it refuses (409) carries them; nothing is stored."""
    try:
        client.register_schema(topic_schema.subject, topic_schema.schema())
    except SchemaRegistryError as exc:
        return f"{exc.error_message} (error_code {exc.error_code})"
    return "incompatible (the registry gave no reason)"  # pragma: no cover -- it refused a moment ago


def derived_serializers(client: SchemaRegistryClient | None = None) -> dict[str, Callable[[dict[str, Any]], bytes]]:
    """Topic name -> encode(event) for VideoWatched and VideoError: Avro in the Confluent wire format.

    confluent-kafka's ``AvroSerializer`` with the registered schema's id (looked up, never
    registered). Each schema is looked up here, so that a worker whose schemas are not registered
    stops at start instead of at its first view close.
    """
    client = client or kafka.schema_registry_client()
    encoders: dict[str, Callable[[dict[str, Any]], bytes]] = {}
    for topic_schema in DERIVED.values():
        try:
            client.lookup_schema(topic_schema.subject, topic_schema.schema())
        except SchemaRegistryError as exc:
            raise SchemaRefusedError(
                f"{topic_schema.subject} is not registered ({exc.error_message}): run `manage.py schemas_register`"
            ) from exc
        serializer = AvroSerializer(client, topic_schema.source(), conf={"auto.register.schemas": False})
        context = SerializationContext(topic_schema.topic_name, MessageField.VALUE)
        encoders[topic_schema.topic_name] = _bind(serializer, context)
    return encoders


def _bind(serializer: AvroSerializer, context: SerializationContext) -> Callable[[dict[str, Any]], bytes]:
    def encode(event: dict[str, Any]) -> bytes:
        data: bytes = serializer(event, context)
        return data

    return encode
