"""Compatibility as Avro schema resolution: the cases that must be accepted and refused, per level.

Decided by Apache Avro's own reader/writer checker (``analytics_platform/schema_registry/
compatibility.py``); the last tests go through the registry process: an incompatible registration
is refused with Confluent's 409, and a consumer holding the older schema reads newer events.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from analytics_platform.schema_registry.compatibility import incompatibilities, schema_parse
from analytics_platform.schema_registry.testing import RegistryProcess, start_registry_process

SCHEMAS = Path(__file__).resolve().parents[2] / "streams" / "schemas"


def rec(*fields: dict[str, Any], name: str = "R", **extra: Any) -> str:
    return json.dumps({"type": "record", "name": name, "fields": list(fields), **extra})


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "E", "symbols": list(symbols), **extra}


def problems(level: str, old: str, new: str) -> list[str]:
    return incompatibilities(level, schema_parse("AVRO", new), [(1, schema_parse("AVRO", old))])


# (old schema, new schema): BACKWARD means the new one reads what the old one wrote.
BACKWARD_ACCEPTED = {
    "a field added with a default": (rec(f("a", "int")), rec(f("a", "int"), f("b", "string", default=""))),
    "a field removed": (rec(f("a", "int"), f("b", "string")), rec(f("a", "int"))),
    "int promoted to long": (rec(f("a", "int")), rec(f("a", "long"))),
    "long promoted to double": (rec(f("a", "long")), rec(f("a", "double"))),
    "int promoted to float": (rec(f("a", "int")), rec(f("a", "float"))),
    "string read as bytes": (rec(f("a", "string")), rec(f("a", "bytes"))),
    "an enum symbol added": (rec(f("a", enum("x", "y"))), rec(f("a", enum("x", "y", "z")))),
    "an enum symbol removed, the reader has an enum default": (
        rec(f("a", enum("x", "y", "z"))),
        rec(f("a", enum("x", "y", default="x"))),
    ),
    "a type widened to a union": (rec(f("a", "long")), rec(f("a", ["null", "long"], default=None))),
    "a union branch added": (rec(f("a", ["null", "string"])), rec(f("a", ["null", "string", "long"]))),
    "a field renamed with an alias": (rec(f("a", "int")), rec(f("b", "int", aliases=["a"]))),
    "a record renamed with an alias": (rec(f("a", "int"), name="Old"), rec(f("a", "int"), name="New", aliases=["Old"])),
    "docs changed": (rec(f("a", "int"), doc="one"), rec(f("a", "int", doc="x"), doc="two")),
    "a nested record gains a defaulted field": (
        rec(f("n", {"type": "record", "name": "N", "fields": [f("x", "int")]})),
        rec(f("n", {"type": "record", "name": "N", "fields": [f("x", "int"), f("y", "int", default=0)]})),
    ),
    "array items promoted": (
        rec(f("a", {"type": "array", "items": "int"})),
        rec(f("a", {"type": "array", "items": "long"})),
    ),
}
BACKWARD_REFUSED = {
    "a field added without a default": (
        rec(f("a", "int")),
        rec(f("a", "int"), f("b", "string")),
        "READER_FIELD_MISSING_DEFAULT_VALUE",
    ),
    "long narrowed to int": (rec(f("a", "long")), rec(f("a", "int")), "TYPE_MISMATCH"),
    "double narrowed to float": (rec(f("a", "double")), rec(f("a", "float")), "TYPE_MISMATCH"),
    "string changed to int": (rec(f("a", "string")), rec(f("a", "int")), "TYPE_MISMATCH"),
    "an enum symbol removed": (rec(f("a", enum("x", "y", "z"))), rec(f("a", enum("x", "y"))), "MISSING_ENUM_SYMBOLS"),
    "a record renamed": (rec(f("a", "int"), name="Old"), rec(f("a", "int"), name="New"), "NAME_MISMATCH"),
    "a union narrowed": (
        rec(f("a", ["null", "string"], default=None)),
        rec(f("a", "string")),
        "TYPE_MISMATCH",
    ),
    "a union branch removed": (
        rec(f("a", ["null", "string", "long"])),
        rec(f("a", ["null", "string"])),
        "MISSING_UNION_BRANCH",
    ),
    "a fixed resized": (
        rec(f("a", {"type": "fixed", "name": "F", "size": 4})),
        rec(f("a", {"type": "fixed", "name": "F", "size": 8})),
        "FIXED_SIZE_MISMATCH",
    ),
    "a nested record gains a field without default": (
        rec(f("n", {"type": "record", "name": "N", "fields": [f("x", "int")]})),
        rec(f("n", {"type": "record", "name": "N", "fields": [f("x", "int"), f("y", "int")]})),
        "READER_FIELD_MISSING_DEFAULT_VALUE",
    ),
}


@pytest.mark.parametrize("case", sorted(BACKWARD_ACCEPTED))
def test_backward_accepts(case: str) -> None:
    old, new = BACKWARD_ACCEPTED[case]
    assert problems("BACKWARD", old, new) == []


@pytest.mark.parametrize("case", sorted(BACKWARD_REFUSED))
def test_backward_refuses(case: str) -> None:
    old, new, kind = BACKWARD_REFUSED[case]
    found = problems("BACKWARD", old, new)
    assert found and kind in found[0], found
    assert found[-1] == "{compatibility: 'BACKWARD'}"


def test_forward_and_full_check_the_other_direction() -> None:
    one = rec(f("a", "int"))
    added_no_default = rec(f("a", "int"), f("b", "string"))
    added_default = rec(f("a", "int"), f("b", "string", default=""))
    # FORWARD: the old schema reads the new one's data; it ignores a new field, even without default.
    assert problems("FORWARD", one, added_no_default) == []
    assert problems("FORWARD", added_no_default, one)  # the old reader needs b, the new writer lacks it
    assert problems("FULL", one, added_default) == []
    assert problems("FULL", one, added_no_default)
    assert problems("NONE", rec(f("a", "string")), rec(f("a", "int"))) == []


def test_transitive_levels_check_every_live_version() -> None:
    v1 = schema_parse("AVRO", rec(f("id", "string"), f("a", "string")))
    v2 = schema_parse("AVRO", rec(f("id", "string")))
    v3 = schema_parse("AVRO", rec(f("id", "string"), f("a", "int", default=0)))
    history = [(1, v1), (2, v2)]
    assert incompatibilities("BACKWARD", v3, history) == []  # against v2 only: fine
    found = incompatibilities("BACKWARD_TRANSITIVE", v3, history)  # v1 wrote a as a string
    assert found and "{oldSchemaVersion: 1}" in found


def test_json_schemas_may_only_be_registered_again_unchanged() -> None:
    old = schema_parse("JSON", json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    same = schema_parse("JSON", json.dumps({"properties": {"a": {"type": "integer"}}, "type": "object"}))
    changed = schema_parse("JSON", json.dumps({"type": "object"}))
    assert incompatibilities("BACKWARD", same, [(1, old)]) == []
    assert incompatibilities("BACKWARD", changed, [(1, old)])
    assert incompatibilities("NONE", changed, [(1, old)]) == []
    assert incompatibilities("BACKWARD", schema_parse("AVRO", '"string"'), [(1, old)])  # a type change


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    process = start_registry_process(data_dir=tmp_path / "registry")
    yield process
    process.stop()


def test_an_incompatible_registration_is_refused_with_409_and_its_reason(registry: RegistryProcess) -> None:
    client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
    watched = (SCHEMAS / "video_watched.avsc").read_text()
    client.register_schema("video-watched-value", Schema(watched, "AVRO"))
    broken = json.loads(watched)
    broken["fields"].append({"name": "bitrateKbps", "type": "long"})  # no default: old events lack it
    with pytest.raises(SchemaRegistryError) as caught:
        client.register_schema("video-watched-value", Schema(json.dumps(broken), "AVRO"))
    assert (caught.value.http_status_code, caught.value.error_code) == (409, 409)
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in caught.value.error_message
    assert "bitrateKbps" in caught.value.error_message
    assert client.get_versions("video-watched-value") == [1]  # nothing was stored


def test_a_consumer_with_the_older_schema_reads_events_of_the_newer_one(registry: RegistryProcess) -> None:
    client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
    old = (SCHEMAS / "video_error.avsc").read_text()
    client.register_schema("video-error-value", Schema(old, "AVRO"))
    evolved = json.loads(old)
    evolved["fields"].append({"name": "errorSeverity", "type": "string", "default": "fatal"})
    evolved["fields"] = [field for field in evolved["fields"] if field["name"] != "cdn"]  # had a default
    new_id = client.register_schema("video-error-value", Schema(json.dumps(evolved), "AVRO"))
    context = SerializationContext("video-error", MessageField.VALUE)
    event = {
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "eventId": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        "userId": "u1",
        "sessionId": "s1",
        "videoId": "v1",
        "timestamp": 1_700_000_000_000,
        "errorCode": "E42",
        "errorMessage": "decoder",
        "errorSeverity": "warning",
    }
    data = AvroSerializer(client, json.dumps(evolved), conf={"auto.register.schemas": False})(event, context)
    assert int.from_bytes(data[1:5], "big") == new_id
    decoded = AvroDeserializer(SchemaRegistryClient(client.config()), old)(data, context)
    assert decoded["errorCode"] == "E42"
    assert "errorSeverity" not in decoded  # unknown to this reader: skipped
    assert decoded["cdn"] == ""  # the writer lacks it: the reader's default


def test_the_latest_version_and_schema_id_options_of_the_serializers(registry: RegistryProcess) -> None:
    """``use.latest.version`` on the deserializer (migrations lookup: deleted=true, versions between)
    and ``use.schema.id`` on the serializer (schema by id, lookup with deleted=true)."""
    client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
    schemas = [
        json.dumps({"type": "record", "name": "U", "fields": [{"name": "a", "type": "int"}, *extra]})
        for extra in (
            [],
            [{"name": "b", "type": "string", "default": "x"}],
            [{"name": "c", "type": "long", "default": 7}],
        )
    ]
    ids = [client.register_schema("u-value", Schema(s, "AVRO")) for s in schemas]
    context = SerializationContext("u", MessageField.VALUE)
    pinned = AvroSerializer(
        SchemaRegistryClient(client.config()),
        schemas[0],
        conf={"auto.register.schemas": False, "use.schema.id": ids[0]},
    )
    data = pinned({"a": 1}, context)
    assert int.from_bytes(data[1:5], "big") == ids[0]
    latest_reader = AvroDeserializer(SchemaRegistryClient(client.config()), conf={"use.latest.version": True})
    assert latest_reader(data, context) == {"a": 1, "c": 7}  # v1 data read as v3 (b dropped, c added), across v2
