"""The topic contracts in the registry: ``manage.py schemas_register`` and the events topic's JSON Schema."""

from __future__ import annotations

import json
import uuid
from typing import Any

import jsonschema
import pytest
from confluent_kafka.schema_registry import Schema
from django.core.management import CommandError, call_command

from analytics_platform import event_format, kafka
from streams import topic_schemas
from streams.processors import tick_message
from tests.support.simulate import batches_coalesce, stream_generate


@pytest.fixture
def prefixed(schema_registry: Any, settings: Any) -> str:
    settings.KAFKA_TOPIC_PREFIX = f"t{uuid.uuid4().hex[:8]}-"
    return settings.KAFKA_TOPIC_PREFIX


def test_schemas_register_registers_every_topic_once(prefixed: str, capsys: pytest.CaptureFixture[str]) -> None:
    call_command("schemas_register")
    first = capsys.readouterr().out
    client = kafka.schema_registry_client()
    subjects = {f"{prefixed}{base}-value" for base in ("events", "video-watched", "video-error")}
    assert subjects <= set(client.get_subjects())
    assert client.get_latest_version(f"{prefixed}events-value").schema.schema_type == "JSON"
    call_command("schemas_register")  # again, as every start and deploy does: the same ids, no new versions
    assert capsys.readouterr().out == first
    assert all(client.get_versions(s) == [1] for s in subjects)
    call_command("schemas_register", "--check")


def test_an_incompatible_schema_stops_the_registration_of_all(prefixed: str) -> None:
    """What a release with a breaking change meets in the deploy's migrate Job: nothing registered."""
    client = kafka.schema_registry_client()
    watched = topic_schemas.DERIVED[event_format.VIDEO_WATCHED_TOPIC]
    # Registered earlier: a VideoWatched without `failed`. The checked-in schema requires `failed`
    # with no default, so it cannot read those events: BACKWARD refuses it.
    older = json.loads(watched.source())
    older["fields"] = [f for f in older["fields"] if f["name"] != "failed"]
    client.register_schema(watched.subject, Schema(json.dumps(older), "AVRO"))
    with pytest.raises(CommandError) as caught:
        call_command("schemas_register")
    assert watched.subject in str(caught.value)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in str(caught.value) and "failed" in str(caught.value)
    assert client.get_versions(watched.subject) == [1]
    assert f"{prefixed}events-value" not in client.get_subjects()  # checked first, so none registered
    with pytest.raises(CommandError):
        call_command("schemas_register", "--check")


def test_the_events_json_schema_describes_what_ingest_and_the_ticker_produce() -> None:
    schema = json.loads(topic_schemas.events_json_schema())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    stream = stream_generate(views=40, users=8, seed=5, poison=False)
    messages = [m.value() for m in stream.messages]
    messages += [m.value() for m in batches_coalesce(stream.messages, partitions=8, max_events=16)]
    messages.append(tick_message(1_700_000_000_000))
    for value in messages:
        validator.validate(json.loads(value))
    bad = json.loads(messages[0])
    bad["events"][0]["userId"] = "u" * (event_format.USER_ID_MAX_CHARS + 1)
    assert not validator.is_valid(bad)
    assert not validator.is_valid({"v": 2})
