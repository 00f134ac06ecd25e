"""Embedded schema registry: a Confluent-compatible REST API over schemas kept under ``var/``.

No Confluent Schema Registry, Karapace or Apicurio runs on these machines (Java or Docker only), so
the local stack and the tests serve this one, the way ``clickhouse_server`` serves chdb. It speaks
the part of Confluent's REST API that confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer``
and ``AvroDeserializer`` use (register, look up, ids, versions, latest, config and compatibility,
compatibility checks, soft and permanent deletes, mode), with Confluent's status codes and error
bodies (``{"error_code": 40401, "message": ...}``). Production points ``SCHEMA_REGISTRY_URL`` at
Confluent, Karapace, Apicurio or Redpanda instead; no code changes.

Modules, in the order a request flows: :mod:`.server` (HTTP, authentication, bounds), :mod:`.api`
(routes and Confluent's errors), :mod:`.compatibility` (parsing and Avro schema resolution, Apache
Avro's own checker), :mod:`.store` (the durable log), :mod:`.cli` (entry point) and
:mod:`.testing` (subprocess helper for tests and the dev stack).

Run it: ``python -m analytics_platform.schema_registry --data-dir DIR [--host 127.0.0.1]
[--port 8081]`` (``SCHEMA_REGISTRY_SERVER_USER_INFO=user:password`` turns on HTTP Basic
authentication; it is required to bind beyond loopback).

Known differences from Confluent's: AVRO and JSON schema types only (no PROTOBUF); schema
references, metadata, rule sets, contexts, guids and the IMPORT/READONLY modes are not
supported; a JSON Schema may only be re-registered unchanged (any change is refused unless the
subject's compatibility is NONE: JSON Schema compatibility rules are not implemented);
``normalize=true`` matches schemas by their JSON with sorted keys, as without it.
"""
