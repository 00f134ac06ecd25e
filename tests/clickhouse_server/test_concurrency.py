"""Four client processes insert and query at once: no error, no lost row.

Duration: ``CH_CONCURRENCY_SECONDS`` (default 60 s, as the issue asks).
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
from clickhouse_driver import Client

from analytics_platform.clickhouse_server.testing import ServerProcess

from .workers import insert_and_query

pytestmark = [pytest.mark.clickhouse, pytest.mark.slow]

WORKERS = 4


def test_four_processes_insert_and_query_concurrently(
    clickhouse_server: ServerProcess, client: Client, table_name: str
) -> None:
    seconds = float(os.environ.get("CH_CONCURRENCY_SECONDS", "60"))
    client.execute(
        f"CREATE TABLE {table_name} (worker UInt8, seq UInt64, payload String)"
        " ENGINE = MergeTree ORDER BY (worker, seq)"
    )
    context = multiprocessing.get_context("spawn")

    with context.Pool(WORKERS) as pool:
        results = pool.starmap(
            insert_and_query,
            [(w, clickhouse_server.client_kwargs(), table_name, seconds) for w in range(WORKERS)],
        )

    counts = dict(client.execute(f"SELECT worker, count() FROM {table_name} GROUP BY worker"))
    assert counts == {w: inserted for w, (inserted, _) in enumerate(results)}
    distinct = client.execute(
        f"SELECT worker, uniqExact(seq), max(seq) + 1 FROM {table_name} GROUP BY worker ORDER BY worker"
    )
    assert distinct == [(w, inserted, inserted) for w, (inserted, _) in enumerate(results)]
    assert all(queries > 0 for _, queries in results)
    print(f"{seconds:.0f}s: rows per worker {[r for r, _ in results]}, queries {[q for _, q in results]}")
