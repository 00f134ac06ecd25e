"""The registry's state and its durable log.

Everything the registry knows is an append-only log of JSON lines in ``<data-dir>/schemas.log``,
like the ``_schemas`` topic Confluent's registry keeps: a schema given an id, a version given to a
subject, a version soft- or permanently deleted, a compatibility level set. Each change is written
and fsynced before it is applied and answered, so an acknowledged registration survives a crash
or ``kill -9``; at start the log is replayed through the same ``_apply`` that live changes use. A
last line cut short by a crash (never acknowledged) is dropped; damage anywhere else stops the
start, since guessing would hand out ids twice.

One process owns a data dir (an exclusive ``flock`` on ``<data-dir>/lock``). All access goes
through one lock: the registry is read at producer and consumer start and on cache misses, not per
message, so contention costs nothing.

Ids are global and given by content: the same schema (type and canonical text) registered under
several subjects has one id, as in Confluent's registry, and keeps it across soft deletes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .compatibility import DEFAULT_LEVEL, ParsedSchema, schema_parse

logger = logging.getLogger(__name__)

LOG_NAME = "schemas.log"


class StoreLimitError(Exception):
    """A bound on what the store holds was reached (see ``Limits``)."""


class StoreCorruptError(Exception):
    """The log cannot be replayed."""


@dataclass(frozen=True)
class Limits:
    """Bounds that keep an authenticated but careless or hostile client from filling disk and memory.

    Far above what this service registers (three subjects, a version per release).
    """

    schemas: int = 10_000
    schema_bytes: int = 256 << 20  # all schema texts together, held in memory and in the log
    subjects: int = 10_000
    versions_per_subject: int = 1_000


@dataclass
class Version:
    version: int
    schema_id: int
    deleted: bool = False


@dataclass
class Subject:
    versions: dict[int, Version] = field(default_factory=dict)  # by version number, ascending
    compatibility: str | None = None  # None: the global level

    def live(self) -> list[Version]:
        return [v for v in self.versions.values() if not v.deleted]

    def next_version(self) -> int:
        # Versions are never reused within a subject while any of its versions are kept.
        return max(self.versions, default=0) + 1


class Store:
    """The registry's state (schemas, subjects, levels) over its log; thread-safe."""

    def __init__(self, data_dir: Path, *, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.lock = threading.RLock()
        self.schemas: dict[int, ParsedSchema] = {}
        self.ids: dict[tuple[str, str], int] = {}  # (type, canonical) -> id
        self.subjects: dict[str, Subject] = {}
        self.schema_bytes = 0
        self.global_compatibility = DEFAULT_LEVEL
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(data_dir / "lock", "a")  # noqa: SIM115 -- held for the store's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.close()
            raise RuntimeError(f"{data_dir} is used by another schema registry process") from exc
        self._path = data_dir / LOG_NAME
        self._replay()
        self._log: IO[bytes] = open(self._path, "ab")  # noqa: SIM115 -- appended to for the store's life

    # Log ----------------------------------------------------------------------------------------

    def _replay(self) -> None:
        if not self._path.exists():
            return
        data = self._path.read_bytes()
        good = 0
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            last = number == len(lines)  # a complete record ends with a newline, so only a cut one is last
            if not line:
                good += 0 if last else 1
                continue
            try:
                record = json.loads(line)
                if last:
                    raise ValueError("unterminated last record")
                self._apply(record)
            except (ValueError, KeyError, TypeError) as exc:
                if last:
                    logger.warning("dropping a partial last record of %s (a crash mid-write): %s", self._path, exc)
                    break
                raise StoreCorruptError(f"{self._path} line {number}: {exc}") from exc
            good += len(line) + 1
        if good < len(data):
            with open(self._path, "r+b") as f:
                f.truncate(good)
        logger.info("schema registry log replayed: %d schemas, %d subjects", len(self.schemas), len(self.subjects))

    def _write(self, record: dict[str, Any]) -> None:
        """Make ``record`` durable, then apply it (so memory never runs ahead of disk)."""
        self._log.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "schema":
            parsed = schema_parse(record["schemaType"], record["schema"])
            self.schemas[int(record["id"])] = parsed
            self.schema_bytes += len(parsed.text)
            self.ids[(parsed.schema_type, parsed.canonical)] = int(record["id"])
        elif op == "version":
            subject = self.subjects.setdefault(record["subject"], Subject())
            subject.versions[int(record["version"])] = Version(int(record["version"]), int(record["id"]))
        elif op == "soft_delete":
            self.subjects[record["subject"]].versions[int(record["version"])].deleted = True
        elif op == "hard_delete":
            subject = self.subjects[record["subject"]]
            del subject.versions[int(record["version"])]
            if not subject.versions:
                del self.subjects[record["subject"]]
        elif op == "config":
            level = record["compatibility"]
            if record["subject"] is None:
                self.global_compatibility = level or DEFAULT_LEVEL
            elif record["subject"] in self.subjects or level is not None:
                self.subjects.setdefault(record["subject"], Subject()).compatibility = level
                self._forget_if_empty(record["subject"])
        else:
            raise ValueError(f"unknown op {op!r}")

    def _forget_if_empty(self, name: str) -> None:
        subject = self.subjects.get(name)
        if subject is not None and not subject.versions and subject.compatibility is None:
            del self.subjects[name]

    def close(self) -> None:
        self._log.close()
        self._lock_file.close()

    # Changes ------------------------------------------------------------------------------------

    def schema_id_ensure(self, parsed: ParsedSchema) -> int:
        """The id of ``parsed``, given a new one (durably) when it is new to the registry."""
        with self.lock:
            found = self.ids.get((parsed.schema_type, parsed.canonical))
            if found is not None:
                return found
            if len(self.schemas) >= self.limits.schemas:
                raise StoreLimitError(f"the registry holds {self.limits.schemas} schemas, its limit")
            if self.schema_bytes + len(parsed.text) > self.limits.schema_bytes:
                raise StoreLimitError(
                    f"the registry's schemas would exceed {self.limits.schema_bytes} bytes, its limit"
                )
            new_id = max(self.schemas, default=0) + 1
            self._write({"op": "schema", "id": new_id, "schemaType": parsed.schema_type, "schema": parsed.text})
            return new_id

    def version_room_check(self, name: str) -> None:
        """Raise ``StoreLimitError`` when ``name`` may not get another version (checked before its schema is stored)."""
        subject = self.subjects.get(name)
        if subject is None and len(self.subjects) >= self.limits.subjects:
            raise StoreLimitError(f"the registry holds {self.limits.subjects} subjects, its limit")
        if subject is not None and len(subject.versions) >= self.limits.versions_per_subject:
            raise StoreLimitError(f"subject holds {self.limits.versions_per_subject} versions, its limit")

    def version_add(self, name: str, schema_id: int) -> int:
        with self.lock:
            self.version_room_check(name)
            subject = self.subjects.get(name)
            version = subject.next_version() if subject is not None else 1
            self._write({"op": "version", "subject": name, "version": version, "id": schema_id})
            return version

    def version_delete(self, name: str, version: int, *, permanent: bool) -> None:
        with self.lock:
            self._write({"op": "hard_delete" if permanent else "soft_delete", "subject": name, "version": version})

    def compatibility_set(self, name: str | None, level: str | None) -> None:
        with self.lock:
            self._write({"op": "config", "subject": name, "compatibility": level})
