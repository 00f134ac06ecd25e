"""Client processes for the concurrency and durability tests (importable by spawned children)."""

from __future__ import annotations

import random
import time
from typing import Any

from clickhouse_driver import Client


def insert_and_query(worker: int, client_kwargs: dict[str, Any], table: str, seconds: float) -> tuple[int, int]:
    """Insert batches and run reads for ``seconds``; return (acknowledged rows, queries run)."""
    client = Client(**client_kwargs, compression="lz4" if worker % 2 else False)
    rng = random.Random(worker)
    inserted = queries = 0
    seq = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        size = rng.choice((1, 10, 1000, 5000))
        rows = [(worker, seq + i, f"w{worker}-{seq + i}") for i in range(size)]
        client.execute(f"INSERT INTO {table} (worker, seq, payload) VALUES", rows)
        seq += size
        inserted += size
        own = client.execute(f"SELECT count() FROM {table} WHERE worker = %(w)s", {"w": worker})[0][0]
        if own != inserted:
            raise AssertionError(f"worker {worker} sees {own} of its {inserted} rows")
        client.execute(f"SELECT worker, count(), uniqExact(seq) FROM {table} GROUP BY worker ORDER BY worker")
        queries += 2
    client.disconnect()
    return inserted, queries
