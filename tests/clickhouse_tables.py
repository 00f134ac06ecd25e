"""Helpers for tests that own the contents of the session's ClickHouse test database."""

from __future__ import annotations

from typing import Any


def truncate_all(client: Any) -> list[str]:
    """Empty every table of the current database: raw tables and every rollup fed from them.

    Emptying only the raw tables would leave the rollups (materialized-view targets) holding
    another test's rows, and metrics read those rollups.
    """
    tables = [
        name
        for (name,) in client.execute(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
        )
    ]
    for table in tables:
        client.execute(f"TRUNCATE TABLE `{table}`")  # names from system.tables, not from input
    return tables
