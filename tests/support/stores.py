"""Test and benchmark helpers for the pure processor: a dict-backed store, merged outputs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from streams.processors import Output, state_encode


class DictStore:
    """A ``StateStore`` in a dict: for tests and the benchmark's pure-processor baseline."""

    def __init__(self) -> None:
        self.data: dict[tuple[bytes, str], Any] = {}

    def get(self, prefix: bytes, key: str) -> Any:
        value = self.data.get((prefix, key))
        # Round-trip through JSON like the Quix store does, so tests catch unserialisable state.
        return None if value is None else orjson.loads(value)

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        self.data[(prefix, key)] = state_encode(value)

    def delete(self, prefix: bytes, key: str) -> None:
        self.data.pop((prefix, key), None)


def outputs_merge(outputs: Iterable[Output]) -> Output:
    """Concatenate the outputs of consecutive messages (tests and the benchmark use it)."""
    merged: Output | None = None
    for item in outputs:
        if merged is None:
            merged = Output(partition=item.partition, offset=item.offset)
        merged.offset = item.offset
        merged.events += item.events
        merged.views += item.views
        merged.view_minutes += item.view_minutes
        merged.video_watched += item.video_watched
        merged.video_errors += item.video_errors
        merged.dead_letters += item.dead_letters
        merged.duplicates += item.duplicates
        merged.late += item.late
    return merged or Output(partition=-1, offset=-1)
