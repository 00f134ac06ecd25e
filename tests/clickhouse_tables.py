"""Helpers for tests that own the contents of the session's ClickHouse test database."""

from __future__ import annotations

from typing import Any

from analytics_platform import warehouse


def truncate_all(client: Any) -> list[str]:
    """Empty every table of the schema (analytics_platform/warehouse.py): raw tables and every
    rollup fed from them.

    Emptying only the raw tables would leave the rollups (materialized-view targets) holding
    another test's rows, and metrics read those rollups.
    """
    tables = list(warehouse.names())
    for table in tables:
        client.execute(f"TRUNCATE TABLE IF EXISTS `{table}`")  # names from the schema module, not from input
    return tables
