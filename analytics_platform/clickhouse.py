"""Plain clickhouse-driver clients built from the Django ``clickhouse`` database settings.

The ORM (django-clickhouse-backend) serves models and migrations; hot paths (stream sinks, metric
queries, exports) use clickhouse-driver directly for columnar inserts and streamed reads. Both
read the same settings, so pointing the service at a production cluster is one change.
"""

from __future__ import annotations

from typing import Any

from clickhouse_driver import Client
from django.db import connections


def client_get(*, database: str | None = None, **overrides: Any) -> Client:
    # connections[...] and not settings: the test runner renames the database to test_<name>.
    db = connections["clickhouse"].settings_dict
    options = dict(db.get("OPTIONS", {}))
    options.pop("settings", None)
    options.update(overrides)
    return Client(
        host=db["HOST"],
        port=int(db["PORT"]),
        user=db["USER"],
        password=db["PASSWORD"],
        database=database or db["NAME"],
        **options,
    )


def database_ensure() -> str:
    """Create the configured ClickHouse database if missing (migrations need it to exist)."""
    name: str = connections["clickhouse"].settings_dict["NAME"]
    client = client_get(database="default")
    try:
        # Identifiers cannot be bound as parameters; the name comes from settings, never a request.
        client.execute(f"CREATE DATABASE IF NOT EXISTS `{name.replace('`', '')}`")
    finally:
        client.disconnect()
    return name
