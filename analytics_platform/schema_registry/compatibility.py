"""Parsing schemas and deciding compatibility, as Confluent's registry does.

Avro compatibility is Avro schema resolution: a reader schema can read what a writer schema wrote.
The check is Apache Avro's own ``ReaderWriterCompatibilityChecker`` (``avro.compatibility``, the
port of the Java ``SchemaCompatibility`` that Confluent's registry calls), not a rewrite: field
defaults, type promotions (int -> long -> float -> double, string <-> bytes), unions, enums with
defaults, names and aliases, fixed sizes, recursion. Parsing goes through fastavro too, because
Apache Avro's Python parser does not check default values against their types and fastavro (what
the serializers use) does.

The levels (Confluent's): BACKWARD -- the new schema reads data written with the latest one (the
default: consumers upgrade first); FORWARD -- the latest reads data written with the new one;
FULL -- both; the ``_TRANSITIVE`` forms check every live version, not only the latest; NONE.

JSON Schema: parsed and checked against its meta-schema; compatibility between two different JSON
Schemas is not implemented here, so a change is refused unless the level is NONE (safe: nothing
incompatible gets in; Confluent's own rules would accept some changes this refuses).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import avro.errors
import avro.schema
import fastavro
import jsonschema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

AVRO = "AVRO"
JSON = "JSON"
SCHEMA_TYPES = (JSON, AVRO)  # what GET /schemas/types answers (Confluent lists its types this way)

NONE = "NONE"
BACKWARD = "BACKWARD"
LEVELS = (
    NONE,
    BACKWARD,
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
DEFAULT_LEVEL = BACKWARD


class InvalidSchemaError(ValueError):
    """The text is not a schema of its type (Confluent's 42201)."""


@dataclass(frozen=True)
class ParsedSchema:
    schema_type: str
    text: str  # as registered, compact JSON: what GET answers
    canonical: str  # identity: two registrations with the same canonical text are one schema (one id)
    parsed: Any  # avro.schema.Schema for AVRO, the JSON object for JSON


def schema_parse(schema_type: str, text: str) -> ParsedSchema:
    """Parse ``text`` as a schema of ``schema_type``; raises ``InvalidSchemaError``."""
    if schema_type not in SCHEMA_TYPES:
        raise InvalidSchemaError(
            f"Invalid schema type {schema_type!r}: this registry supports {', '.join(SCHEMA_TYPES)}"
        )
    try:
        document = json.loads(text)
    except RecursionError as exc:
        raise InvalidSchemaError("Invalid schema: nested too deeply") from exc
    except ValueError as exc:
        raise InvalidSchemaError(f"Invalid schema: not JSON ({exc})") from exc
    compact = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    canonical = json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    try:
        if schema_type == AVRO:
            fastavro.parse_schema(document)  # checks defaults against their types
            parsed: Any = avro.schema.parse(compact)
        else:
            if not isinstance(document, dict | bool):
                raise InvalidSchemaError("Invalid schema: a JSON Schema is an object or a boolean")
            jsonschema.validators.validator_for(document).check_schema(document)
            parsed = document
    except InvalidSchemaError:
        raise
    except RecursionError as exc:
        raise InvalidSchemaError("Invalid schema: nested too deeply") from exc
    except Exception as exc:
        raise InvalidSchemaError(f"Invalid schema: {type(exc).__name__}: {exc}"[:1000]) from exc
    return ParsedSchema(schema_type, compact, canonical, parsed)


def level_valid(level: str) -> bool:
    return level in LEVELS


def _read_problems(reader: ParsedSchema, writer: ParsedSchema, *, direction: str) -> list[str]:
    """Why ``reader`` cannot read what ``writer`` wrote (empty: it can)."""
    if reader.schema_type != writer.schema_type:
        types = f"{writer.schema_type} and {reader.schema_type}"
        return [f"{{errorType:'SCHEMA_TYPE_MISMATCH', description:'{direction}: {types}'}}"]
    if reader.schema_type == JSON:
        if reader.canonical == writer.canonical:
            return []
        return [
            f"{{errorType:'JSON_SCHEMA_CHANGED', description:'{direction}: this registry refuses any change to a"
            " JSON Schema unless the compatibility level is NONE'}"
        ]
    try:
        result = ReaderWriterCompatibilityChecker().get_compatibility(reader.parsed, writer.parsed)
    except (avro.errors.AvroException, RecursionError) as exc:
        return [f"{{errorType:'CHECK_FAILED', description:'{direction}: {exc}'}}"]
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({kind.name.upper() for kind in result.incompatibilities}))
    locations = ", ".join(sorted(result.locations))
    messages = "; ".join(sorted(result.messages))
    return [f"{{errorType:'{kinds}', description:'{direction}: {messages}', path:'{locations}'}}"]


def incompatibilities(level: str, new: ParsedSchema, previous: list[tuple[int, ParsedSchema]]) -> list[str]:
    """Why ``new`` may not follow ``previous`` (live versions, oldest first) under ``level``; empty: it may."""
    if level == NONE or not previous:
        return []
    checked = previous if level.endswith("_TRANSITIVE") else previous[-1:]
    base = level.removesuffix("_TRANSITIVE")
    problems: list[str] = []
    for version, old in checked:
        found: list[str] = []
        if base in ("BACKWARD", "FULL"):
            found += _read_problems(new, old, direction="the new schema cannot read data written with the old one")
        if base in ("FORWARD", "FULL"):
            found += _read_problems(old, new, direction="the old schema cannot read data written with the new one")
        if found:
            problems += [*found, f"{{oldSchemaVersion: {version}}}"]
    if problems:
        problems.append(f"{{compatibility: '{level}'}}")
    return problems
