"""The routes of Confluent's REST API and its error codes, over the ``Store``.

``RegistryApi.handle(method, segments, query, body)`` returns ``(status, payload)``; every refusal
is a ``RegistryError`` carrying Confluent's HTTP status and ``error_code`` (the ones its clients
read: ``SchemaRegistryError.error_code``), with messages worded like Confluent's:

=====  ==========  ==========================================================================
HTTP   error_code  meaning
=====  ==========  ==========================================================================
400    400         body is not JSON
401    401         no or wrong credentials (``server.py``)
404    40401       subject not found
404    40402       version not found
404    40403       schema not found
404    40404       subject soft-deleted (permanent=true needed, or deleted=true to see it)
404    40405       subject not soft-deleted before a permanent delete
404    40406       version soft-deleted
404    40407       version not soft-deleted before a permanent delete
404    40408       subject has no compatibility level of its own
404    40409       subject has no mode of its own
409    409         incompatible schema
413    413         body too large (``server.py``)
422    42201       invalid schema
422    42202       invalid version
422    42203       invalid compatibility level
422    42204       invalid or unsupported mode
422    422         invalid request (a subject name, a field)
500    50001       store error (a limit reached, a disk failure)
=====  ==========  ==========================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import compatibility
from .compatibility import InvalidSchemaError, ParsedSchema, schema_parse
from .store import Store, StoreLimitError, Subject, Version

SUBJECT_MAX_CHARS = 255
VERSION_MAX = 2**31 - 1


@dataclass
class RegistryError(Exception):
    status: int
    error_code: int
    message: str

    def body(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message}


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "false").strip().lower() == "true"  # the Python client sends True/False


def _subject_not_found(name: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{name}' not found.")


def _subject_name(raw: str) -> str:
    if not raw or len(raw) > SUBJECT_MAX_CHARS or not raw.isprintable():
        raise RegistryError(422, 422, f"Invalid subject name: 1-{SUBJECT_MAX_CHARS} printable characters")
    return raw


def _schema_body(schema: ParsedSchema, **extra: Any) -> dict[str, Any]:
    body = {**extra, "schema": schema.text}
    if schema.schema_type != compatibility.AVRO:
        body["schemaType"] = schema.schema_type  # Confluent leaves it out for AVRO, the default
    return body


class RegistryApi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def handle(self, method: str, segments: list[str], query: dict[str, str], body: bytes) -> tuple[int, Any]:
        try:
            with self.store.lock:
                return 200, self._route(method, segments, query, body)
        except StoreLimitError as exc:
            raise RegistryError(500, 50001, f"Error in the backend data store: {exc}") from exc
        except OSError as exc:
            raise RegistryError(500, 50001, f"Error in the backend data store: {exc}") from exc

    # Routing ------------------------------------------------------------------------------------

    def _route(self, method: str, segments: list[str], query: dict[str, str], body: bytes) -> Any:
        match (method, segments):
            case ("GET", []):
                return {}
            case ("GET", ["schemas", "types"]):
                return list(compatibility.SCHEMA_TYPES)
            case ("GET", ["schemas", "ids", raw_id]):
                schema_id, schema = self._schema_by_id(raw_id)
                return _schema_body(schema)
            case ("GET", ["schemas", "ids", raw_id, "schema"]):
                return self._schema_by_id(raw_id)[1].text
            case ("GET", ["schemas", "ids", raw_id, "subjects"]):
                schema_id, _ = self._schema_by_id(raw_id)
                return sorted({s for s, _ in self._uses(schema_id, deleted=_flag(query, "deleted"))})
            case ("GET", ["schemas", "ids", raw_id, "versions"]):
                schema_id, _ = self._schema_by_id(raw_id)
                return [{"subject": s, "version": v} for s, v in self._uses(schema_id, deleted=_flag(query, "deleted"))]
            case ("GET", ["subjects"]):
                return self._subjects_list(query)
            case ("POST", ["subjects", subject]):
                return self._lookup(_subject_name(subject), query, body)
            case ("DELETE", ["subjects", subject]):
                return self._subject_delete(_subject_name(subject), permanent=_flag(query, "permanent"))
            case ("GET", ["subjects", subject, "versions"]):
                return self._versions_list(_subject_name(subject), query)
            case ("POST", ["subjects", subject, "versions"]):
                return self._register(_subject_name(subject), body)
            case ("GET", ["subjects", subject, "versions", raw_version]):
                name = _subject_name(subject)
                found = self._version(name, raw_version, deleted=_flag(query, "deleted"))
                return _schema_body(
                    self.store.schemas[found.schema_id], subject=name, version=found.version, id=found.schema_id
                )
            case ("GET", ["subjects", subject, "versions", raw_version, "schema"]):
                found = self._version(_subject_name(subject), raw_version, deleted=_flag(query, "deleted"))
                return self.store.schemas[found.schema_id].text
            case ("GET", ["subjects", subject, "versions", raw_version, "referencedby"]):
                self._version(_subject_name(subject), raw_version, deleted=True)
                return []  # references are not supported, so nothing refers to anything
            case ("DELETE", ["subjects", subject, "versions", raw_version]):
                return self._version_delete(_subject_name(subject), raw_version, permanent=_flag(query, "permanent"))
            case ("POST", ["compatibility", "subjects", subject, "versions", raw_version]):
                return self._compatibility_test(_subject_name(subject), raw_version, query, body)
            case ("POST", ["compatibility", "subjects", subject, "versions"]):
                return self._compatibility_test(_subject_name(subject), None, query, body)
            case ("GET", ["config"]):
                return {"compatibilityLevel": self.store.global_compatibility}
            case ("PUT", ["config"]):
                level = self._level(body)
                self.store.compatibility_set(None, level)
                return {"compatibility": level}
            case ("DELETE", ["config"]):
                old = self.store.global_compatibility
                self.store.compatibility_set(None, None)
                return {"compatibilityLevel": old}
            case ("GET", ["config", subject]):
                return {"compatibilityLevel": self._subject_level(_subject_name(subject), query)}
            case ("PUT", ["config", subject]):
                level = self._level(body)
                self.store.compatibility_set(_subject_name(subject), level)
                return {"compatibility": level}
            case ("DELETE", ["config", subject]):
                name = _subject_name(subject)
                configured = self.store.subjects.get(name)
                if configured is None:
                    raise _subject_not_found(name)
                old = configured.compatibility or self.store.global_compatibility
                self.store.compatibility_set(name, None)
                return {"compatibilityLevel": old}
            case ("GET", ["mode"]):
                return {"mode": "READWRITE"}
            case ("GET", ["mode", subject]):
                _subject_name(subject)
                if _flag(query, "defaultToGlobal"):
                    return {"mode": "READWRITE"}
                raise RegistryError(404, 40409, f"Subject '{subject}' does not have subject-level mode configured")
            case ("PUT", ["mode"] | ["mode", _]):
                mode = self._json(body).get("mode")
                if mode != "READWRITE":
                    raise RegistryError(422, 42204, f"Invalid mode {mode!r}: this registry supports READWRITE only")
                return {"mode": mode}
            case ("GET", ["contexts"]):
                return ["."]
        if self._known_path(segments):
            raise RegistryError(405, 405, "HTTP 405 Method Not Allowed")
        raise RegistryError(404, 404, "HTTP 404 Not Found")

    @staticmethod
    def _known_path(segments: list[str]) -> bool:
        return bool(segments) and segments[0] in {"schemas", "subjects", "compatibility", "config", "mode", "contexts"}

    # Reading ------------------------------------------------------------------------------------

    def _schema_by_id(self, raw: str) -> tuple[int, ParsedSchema]:
        try:
            schema_id = int(raw)
        except ValueError:
            schema_id = -1
        schema = self.store.schemas.get(schema_id)
        if schema is None:
            raise RegistryError(404, 40403, "Schema not found")
        return schema_id, schema

    def _uses(self, schema_id: int, *, deleted: bool) -> list[tuple[str, int]]:
        return [
            (name, version.version)
            for name, subject in sorted(self.store.subjects.items())
            for version in subject.versions.values()
            if version.schema_id == schema_id and (deleted or not version.deleted)
        ]

    def _subjects_list(self, query: dict[str, str]) -> list[str]:
        prefix = query.get("subjectPrefix") or query.get("subject") or ""
        deleted, deleted_only = _flag(query, "deleted"), _flag(query, "deleted_only")
        names = []
        for name, subject in sorted(self.store.subjects.items()):
            if not name.startswith(prefix) or not subject.versions:
                continue
            live = bool(subject.live())
            if (deleted_only and not live) or (not deleted_only and (live or deleted)):
                names.append(name)
        return names

    def _subject(self, name: str, *, deleted: bool = False) -> Subject:
        """A subject with versions (live ones unless ``deleted``); 40401 otherwise, as Confluent."""
        subject = self.store.subjects.get(name)
        if subject is None or not subject.versions or (not deleted and not subject.live()):
            raise _subject_not_found(name)
        return subject

    def _versions_list(self, name: str, query: dict[str, str]) -> list[int]:
        deleted, deleted_only = _flag(query, "deleted"), _flag(query, "deleted_only")
        subject = self._subject(name, deleted=deleted or deleted_only)
        return [
            v.version for v in subject.versions.values() if (v.deleted if deleted_only else deleted or not v.deleted)
        ]

    @staticmethod
    def _version_number(raw: str) -> int | None:
        """None for ``latest`` (or -1, its alias); 42202 for anything but 1..2^31-1."""
        if raw in ("latest", "-1"):
            return None
        try:
            number = int(raw)
        except ValueError:
            number = 0
        if not 1 <= number <= VERSION_MAX:
            raise RegistryError(
                422,
                42202,
                f"The specified version '{raw}' is not a valid version id. Allowed values are between"
                f' [1, {VERSION_MAX}] and the string "latest"',
            )
        return number

    def _version(self, name: str, raw: str, *, deleted: bool) -> Version:
        number = self._version_number(raw)
        subject = self._subject(name, deleted=deleted)
        if number is None:
            candidates = list(subject.versions.values()) if deleted else subject.live()
            return candidates[-1]
        found = subject.versions.get(number)
        if found is None or (found.deleted and not deleted):
            raise RegistryError(404, 40402, f"Version {raw} not found.")
        return found

    def _subject_level(self, name: str, query: dict[str, str]) -> str:
        subject = self.store.subjects.get(name)
        if subject is not None and subject.compatibility is not None:
            return subject.compatibility
        if _flag(query, "defaultToGlobal"):
            return self.store.global_compatibility
        raise RegistryError(404, 40408, f"Subject '{name}' does not have subject-level compatibility configured")

    # Bodies -------------------------------------------------------------------------------------

    @staticmethod
    def _json(body: bytes) -> dict[str, Any]:
        try:
            document = json.loads(body or b"{}")
        except RecursionError as exc:
            raise RegistryError(400, 400, "Request body nested too deeply") from exc
        except ValueError as exc:
            raise RegistryError(400, 400, f"Request body is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise RegistryError(422, 422, "Request body must be a JSON object")
        return document

    def _parsed(self, body: bytes) -> ParsedSchema:
        request = self._json(body)
        text = request.get("schema")
        if not isinstance(text, str) or not text:
            raise RegistryError(422, 42201, "Empty schema")
        schema_type = request.get("schemaType") or compatibility.AVRO
        if not isinstance(schema_type, str):
            raise RegistryError(422, 42201, "Invalid schema type")
        if request.get("references"):
            raise RegistryError(422, 42201, "Invalid schema: schema references are not supported by this registry")
        try:
            return schema_parse(schema_type.upper(), text)
        except InvalidSchemaError as exc:
            raise RegistryError(422, 42201, str(exc)) from exc

    def _level(self, body: bytes) -> str:
        request = self._json(body)
        level = request.get("compatibility", request.get("compatibilityLevel"))
        if not isinstance(level, str) or not compatibility.level_valid(level.upper()):
            raise RegistryError(
                422,
                42203,
                "Invalid compatibility level. Valid values are none, backward, forward, full,"
                " backward_transitive, forward_transitive, and full_transitive",
            )
        return level.upper()

    # Writing ------------------------------------------------------------------------------------

    def _match(self, subject: Subject, parsed: ParsedSchema, *, deleted: bool) -> Version | None:
        schema_id = self.store.ids.get((parsed.schema_type, parsed.canonical))
        if schema_id is None:
            return None
        matches = [v for v in subject.versions.values() if v.schema_id == schema_id and (deleted or not v.deleted)]
        return matches[-1] if matches else None

    def _lookup(self, name: str, query: dict[str, str], body: bytes) -> dict[str, Any]:
        parsed = self._parsed(body)
        subject = self._subject(name, deleted=_flag(query, "deleted"))
        found = self._match(subject, parsed, deleted=_flag(query, "deleted"))
        if found is None:
            raise RegistryError(404, 40403, "Schema not found")
        return _schema_body(
            self.store.schemas[found.schema_id], subject=name, version=found.version, id=found.schema_id
        )

    def _level_of(self, name: str) -> str:
        subject = self.store.subjects.get(name)
        return (subject.compatibility if subject else None) or self.store.global_compatibility

    def _previous(self, name: str) -> list[tuple[int, ParsedSchema]]:
        subject = self.store.subjects.get(name)
        live = subject.live() if subject else []
        return [(v.version, self.store.schemas[v.schema_id]) for v in live]

    def _register(self, name: str, body: bytes) -> dict[str, Any]:
        parsed = self._parsed(body)
        subject = self.store.subjects.get(name)
        if subject is not None:
            existing = self._match(subject, parsed, deleted=False)
            if existing is not None:  # registering again what is there: its id, no new version
                return {"id": existing.schema_id, "version": existing.version}
        level = self._level_of(name)
        problems = compatibility.incompatibilities(level, parsed, self._previous(name))
        if problems:
            raise RegistryError(
                409,
                409,
                f'Schema being registered is incompatible with an earlier schema for subject "{name}",'
                f" details: [{', '.join(problems)}]",
            )
        self.store.version_room_check(name)  # first: no schema stored for a version that is refused
        schema_id = self.store.schema_id_ensure(parsed)
        version = self.store.version_add(name, schema_id)
        return {"id": schema_id, "version": version}

    def _compatibility_test(
        self, name: str, raw_version: str | None, query: dict[str, str], body: bytes
    ) -> dict[str, Any]:
        parsed = self._parsed(body)
        level = self._level_of(name)
        number = None if raw_version is None else self._version_number(raw_version)
        if number is None:
            previous = self._previous(name)
            if raw_version is not None:
                previous = previous[-1:]  # "latest": that version only
                level = level.removesuffix("_TRANSITIVE")
        else:
            found = self._version(name, raw_version or "", deleted=False)
            previous = [(found.version, self.store.schemas[found.schema_id])]
            level = level.removesuffix("_TRANSITIVE")
        problems = compatibility.incompatibilities(level, parsed, previous)
        result: dict[str, Any] = {"is_compatible": not problems}
        if _flag(query, "verbose"):
            result["messages"] = problems
        return result

    def _subject_delete(self, name: str, *, permanent: bool) -> list[int]:
        subject = self.store.subjects.get(name)
        if subject is None or not subject.versions:
            raise _subject_not_found(name)
        live = subject.live()
        if permanent:
            if live:
                raise RegistryError(
                    404, 40405, f"Subject '{name}' was not deleted first before being permanently deleted"
                )
            numbers = list(subject.versions)
            for number in numbers:
                self.store.version_delete(name, number, permanent=True)
            return numbers
        if not live:
            raise RegistryError(
                404, 40404, f"Subject '{name}' was soft deleted.Set permanent=true to delete permanently"
            )
        for version in live:
            self.store.version_delete(name, version.version, permanent=False)
        return [v.version for v in live]

    def _version_delete(self, name: str, raw: str, *, permanent: bool) -> int:
        number = self._version_number(raw)
        subject = self._subject(name, deleted=True)
        if number is None:
            live = subject.live()
            if not live:
                raise _subject_not_found(name)
            number = live[-1].version
        found = subject.versions.get(number)
        if found is None:
            raise RegistryError(404, 40402, f"Version {raw} not found.")
        if permanent and not found.deleted:
            raise RegistryError(
                404, 40407, f"Subject '{name}' Version {number} was not deleted first before being permanently deleted"
            )
        if not permanent and found.deleted:
            raise RegistryError(
                404,
                40406,
                f"Subject '{name}' Version {number} was soft deleted.Set permanent=true to delete permanently",
            )
        self.store.version_delete(name, number, permanent=permanent)
        return number
