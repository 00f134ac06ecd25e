"""The embedded registry through confluent-kafka's own client, against the real registry process.

Every call the Avro serializer and deserializer make (register, lookup, get by id, latest), the
rest of the client's surface this service or an operator uses (versions, config, compatibility
checks, deletes, mode), Confluent's error codes for each refusal, and a restart that keeps ids.
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

from analytics_platform.schema_registry.testing import RegistryProcess, start_registry_process

SCHEMAS = Path(__file__).resolve().parents[2] / "streams" / "schemas"


def record(name: str, fields: list[dict[str, Any]], **extra: Any) -> Schema:
    return Schema(json.dumps({"type": "record", "name": name, "fields": fields, **extra}), "AVRO")


V1 = record("User", [{"name": "id", "type": "string"}, {"name": "age", "type": "int"}])
# Backward compatible: a new field with a default; age promoted from int to long.
V2 = record(
    "User",
    [
        {"name": "id", "type": "string"},
        {"name": "age", "type": "long"},
        {"name": "country", "type": "string", "default": ""},
    ],
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    process = start_registry_process(data_dir=tmp_path / "registry", log_file=tmp_path / "registry.log")
    yield process
    process.stop()


@pytest.fixture
def client(registry: RegistryProcess) -> SchemaRegistryClient:
    return SchemaRegistryClient({**registry.client_config(), "max.retries": 0})


def error_of(call: Any, *args: Any, **kwargs: Any) -> tuple[int, int]:
    with pytest.raises(SchemaRegistryError) as caught:
        call(*args, **kwargs)
    return caught.value.http_status_code, caught.value.error_code


def test_the_serializer_and_deserializer_round_trip_through_the_registry(client: SchemaRegistryClient) -> None:
    watched = (SCHEMAS / "video_watched.avsc").read_text()
    serializer = AvroSerializer(client, watched)  # auto.register.schemas: POST /subjects/s/versions
    context = SerializationContext("video-watched", MessageField.VALUE)
    event = {
        "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "userId": "u1",
        "sessionId": "s1",
        "videoId": "v1",
        "startTime": 1_700_000_000_000,
        "endTime": 1_700_000_060_000,
        "watchTimeMs": 55_000,
        "startupTimeMs": 800,
        "rebufferCount": 1,
        "rebufferDurationMs": 1_200,
        "completionFraction": 0.5,
        "failed": False,
        "closeReason": "ended",
    }
    data = serializer(event, context)
    assert data[:1] == b"\x00"
    schema_id = int.from_bytes(data[1:5], "big")
    assert schema_id == client.get_latest_version("video-watched-value").schema_id
    # A fresh client (no cache): GET /schemas/ids/{id}, as any consumer's deserializer does.
    decoded = AvroDeserializer(SchemaRegistryClient(client.config()))(data, context)
    assert str(decoded["id"]) == event["id"]
    assert decoded["watchTimeMs"] == 55_000 and decoded["closeReason"] == "ended" and decoded["device"] == ""
    # auto.register.schemas off: POST /subjects/s (lookup) finds the registered schema.
    looked_up = AvroSerializer(SchemaRegistryClient(client.config()), watched, conf={"auto.register.schemas": False})
    assert looked_up(event, context) == data
    # use.latest.version: GET /subjects/s/versions/latest.
    latest = AvroSerializer(
        SchemaRegistryClient(client.config()),
        watched,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    assert latest(event, context) == data


def test_register_lookup_ids_versions_and_latest(client: SchemaRegistryClient) -> None:
    first = client.register_schema("users-value", V1)
    assert client.register_schema("users-value", V1) == first  # the same schema again: its id
    # The same schema under another subject: the same global id, version 1 there.
    assert client.register_schema("other-value", V1) == first
    second = client.register_schema("users-value", V2)
    assert second != first
    assert client.get_versions("users-value") == [1, 2]
    assert client.get_subjects() == ["other-value", "users-value"]
    latest = client.get_latest_version("users-value")
    assert (latest.version, latest.schema_id, latest.subject) == (2, second, "users-value")
    assert json.loads(latest.schema.schema_str) == json.loads(V2.schema_str)
    assert client.get_version("users-value", 1).schema_id == first
    assert json.loads(client.get_schema(first).schema_str) == json.loads(V1.schema_str)
    looked_up = client.lookup_schema("users-value", V1)
    assert (looked_up.schema_id, looked_up.version) == (first, 1)
    # Whitespace and key order do not make another schema.
    respaced = Schema(json.dumps(json.loads(V1.schema_str), indent=4, sort_keys=True), "AVRO")
    assert SchemaRegistryClient(client.config()).lookup_schema("users-value", respaced).schema_id == first
    assert sorted(client.get_subjects_by_schema_id(first)) == ["other-value", "users-value"]
    assert {(v.subject, v.version) for v in client.get_schema_versions(first)} == {
        ("other-value", 1),
        ("users-value", 1),
    }
    assert set(client.get_schema_types()) >= {"AVRO", "JSON"}
    assert client.get_referenced_by("users-value", 1) == []


def test_errors_carry_confluents_codes(client: SchemaRegistryClient) -> None:
    client.register_schema("users-value", V1)
    assert error_of(client.get_latest_version, "missing-value") == (404, 40401)
    assert error_of(client.get_version, "users-value", 7) == (404, 40402)
    assert error_of(client.get_version, "users-value", 0) == (422, 42202)
    assert error_of(client.get_schema, 999) == (404, 40403)
    assert error_of(client.lookup_schema, "users-value", V2) == (404, 40403)
    assert error_of(client.lookup_schema, "missing-value", V1) == (404, 40401)
    assert error_of(client.register_schema, "users-value", Schema('{"type": "recordx"}', "AVRO")) == (422, 42201)
    assert error_of(client.register_schema, "users-value", Schema("not json", "AVRO")) == (422, 42201)
    bad_default = record("User", [{"name": "id", "type": "int", "default": "x"}])
    assert error_of(client.register_schema, "users-value", bad_default) == (422, 42201)
    assert error_of(client.register_schema, "users-value", Schema("{}", "PROTOBUF")) == (422, 42201)
    assert error_of(client.set_compatibility, "users-value", "SIDEWAYS") == (422, 42203)
    assert error_of(client.get_compatibility, "users-value") == (404, 40408)
    assert error_of(client.update_mode, "users-value", "IMPORT") == (422, 42204)


def test_compatibility_levels_and_checks(client: SchemaRegistryClient) -> None:
    assert client.get_compatibility() == "BACKWARD"
    client.register_schema("users-value", V1)
    # The check the serializers never make but the deploy does: against the latest and all versions.
    assert client.test_compatibility("users-value", V2) is True
    assert client.test_compatibility_all_versions("users-value", V2) is True
    no_default = record("User", [{"name": "id", "type": "string"}, {"name": "plan", "type": "string"}])
    assert client.test_compatibility("users-value", no_default) is False
    assert client.test_compatibility("missing-value", no_default) is True  # nothing to be compatible with
    # Subject-level config overrides the global one; deleting it falls back.
    assert client.set_compatibility("users-value", "none") == {"compatibility": "NONE"}
    assert client.get_compatibility("users-value") == "NONE"
    assert client.test_compatibility("users-value", no_default) is True
    client.delete_config("users-value")
    assert client.test_compatibility("users-value", no_default) is False
    assert client.set_compatibility(level="FULL") == {"compatibility": "FULL"}
    assert client.get_config().compatibility_level == "FULL"
    assert client.get_global_mode() == "READWRITE"


def test_soft_and_permanent_deletes(client: SchemaRegistryClient) -> None:
    first = client.register_schema("users-value", V1)
    client.register_schema("users-value", V2)
    assert client.delete_version("users-value", 2) == 2
    assert client.get_versions("users-value") == [1]
    assert client.get_versions("users-value", deleted=True) == [1, 2]
    assert client.get_latest_version("users-value").version == 1
    assert error_of(client.delete_version, "users-value", 2) == (404, 40406)
    assert error_of(client.delete_version, "users-value", 1, permanent=True) == (404, 40407)
    assert error_of(client.delete_subject, "users-value", permanent=True) == (404, 40405)
    assert client.delete_subject("users-value") == [1]
    assert error_of(client.get_versions, "users-value") == (404, 40401)
    assert error_of(client.delete_subject, "users-value") == (404, 40404)
    assert client.get_subjects(deleted=True) == ["users-value"]
    assert client.get_schema(first)  # a soft-deleted version's schema stays readable by id
    assert sorted(client.delete_subject("users-value", permanent=True)) == [1, 2]
    assert client.get_subjects(deleted=True) == []
    # Registered again after the permanent delete: the same id (ids follow content), version 1.
    assert client.register_schema("users-value", V1) == first
    assert client.get_versions("users-value") == [1]


def test_a_restart_keeps_schemas_ids_and_config_and_a_kill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "registry"
    registry = start_registry_process(data_dir=data_dir)
    client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
    first = client.register_schema("users-value", V1)
    second = client.register_schema("users-value", V2)
    client.set_compatibility("users-value", "FULL")
    client.delete_version("users-value", 1)
    registry.kill()  # SIGKILL: no clean shutdown
    registry = start_registry_process(data_dir=data_dir)
    try:
        client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
        assert client.get_versions("users-value", deleted=True) == [1, 2]
        assert client.get_versions("users-value") == [2]
        assert client.get_latest_version("users-value").schema_id == second
        assert json.loads(client.get_schema(first).schema_str) == json.loads(V1.schema_str)
        assert client.get_compatibility("users-value") == "FULL"
        # New ids continue after the old ones, never reuse them.
        third = client.register_schema("other-value", record("Other", [{"name": "x", "type": "int"}]))
        assert third > second
    finally:
        registry.stop()
    # A last record cut short by a crash mid-write was never acknowledged: dropped at start.
    log = data_dir / "schemas.log"
    log.write_bytes(log.read_bytes() + b'{"op":"version","subject":"users-value","ver')
    registry = start_registry_process(data_dir=data_dir)
    try:
        client = SchemaRegistryClient({**registry.client_config(), "max.retries": 0})
        assert client.get_versions("users-value") == [2]
        assert client.register_schema("third-value", record("Third", [{"name": "id", "type": "string"}])) == third + 1
    finally:
        registry.stop()
    assert log.read_bytes().endswith(b"\n")


def test_one_process_owns_a_data_dir(registry: RegistryProcess, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        start_registry_process(data_dir=registry.data_dir, timeout=10)


def test_concurrent_registrations_give_one_id_per_schema(client: SchemaRegistryClient) -> None:
    """Producers starting together register at once: one id per schema, one version per subject."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(f"s{n % 4}-value", record(f"R{n % 2}", [{"name": "a", "type": "int"}])) for n in range(64)]

    def register(job: tuple[str, Schema]) -> tuple[str, str, int]:
        subject, schema = job
        own = SchemaRegistryClient(client.config())  # no shared cache: every call reaches the registry
        return subject, schema.schema_str, own.register_schema(subject, schema)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(register, jobs))
    ids_by_schema: dict[str, set[int]] = {}
    for _, schema_str, schema_id in results:
        ids_by_schema.setdefault(schema_str, set()).add(schema_id)
    assert sorted(len(ids) for ids in ids_by_schema.values()) == [1, 1], ids_by_schema
    assert {next(iter(ids)) for ids in ids_by_schema.values()} == {1, 2}
    for subject in ("s0-value", "s1-value", "s2-value", "s3-value"):
        assert client.get_versions(subject) == [1]
