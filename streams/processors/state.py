"""Per-partition state: the store interface and the write-back cache in front of it."""

from __future__ import annotations

from typing import Any, Protocol

import orjson


def _set_as_list(value: Any) -> list[Any]:
    if type(value) is set:
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable state")


def state_encode(value: Any) -> bytes:
    """A state value as the stores keep it: JSON, with sets (a user's dedup ids) as lists.

    The ids are sets in memory, also inside a user's entry; orjson calls ``default`` only for the
    types it cannot encode itself, so other values cost nothing extra.
    """
    return orjson.dumps(value, default=_set_as_list)


class StateStore(Protocol):
    """Key-value state of one partition; values are what ``state_encode`` takes."""

    def get(self, prefix: bytes, key: str) -> Any: ...

    def set(self, prefix: bytes, key: str, value: Any) -> None: ...

    def delete(self, prefix: bytes, key: str) -> None: ...


class StateCache:
    """A write-back cache over one partition's ``StateStore`` (like Kafka Streams' record cache).

    Reads go to the backend once and are then served from memory (misses are remembered too);
    writes only mark the entry dirty. ``flush`` (once per checkpoint, before Quix produces the
    changelog and commits) writes each dirty entry once, however many messages changed it. Why: the
    Quix store serialises the key and the value on every ``set`` and deserialises on every ``get``;
    the partition watermark and the timer buckets changed on almost every message, and a user's
    state on each of its messages.

    Values are shared, mutable objects: the processor must ``set`` what it changed (it does). The
    backend is rebound on each message (Quix opens a new transaction per checkpoint).
    """

    __slots__ = ("backend", "dirty", "values")

    def __init__(self, backend: StateStore) -> None:
        self.backend = backend
        self.values: dict[tuple[bytes, str], Any] = {}
        self.dirty: set[tuple[bytes, str]] = set()

    def get(self, prefix: bytes, key: str) -> Any:
        entry = (prefix, key)
        try:
            return self.values[entry]
        except KeyError:
            value = self.values[entry] = self.backend.get(prefix, key)
            return value

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        entry = (prefix, key)
        self.values[entry] = value
        self.dirty.add(entry)

    def delete(self, prefix: bytes, key: str) -> None:
        entry = (prefix, key)
        self.values[entry] = None
        self.dirty.add(entry)

    def flush(self, capacity: int) -> int:
        """Write the dirty entries to the backend; keep at most ``capacity`` entries cached."""
        backend = self.backend
        values = self.values
        for entry in self.dirty:
            value = values[entry]
            if value is None:
                backend.delete(*entry)
            else:
                backend.set(entry[0], entry[1], value)
        written = len(self.dirty)
        if len(values) > capacity:
            # Keep what this checkpoint wrote (the active users), drop the rest.
            self.values = {entry: values[entry] for entry in self.dirty} if written <= capacity else {}
        self.dirty = set()
        return written
