"""The raw events' TTL is the ingest window's retention: one setting, read when migration 0005 runs."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
from django.db import connections

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"], transaction=True)]

ttl_migration = importlib.import_module("streams.migrations.0005_events_ttl_from_settings")


def events_ttl_days() -> int:
    with connections["clickhouse"].cursor() as cursor:
        cursor.execute("SHOW CREATE TABLE events")
        [(ddl,)] = cursor.fetchall()
    match = re.search(r"TTL toDateTime\(ts\) \+ toIntervalDay\((\d+)\)", ddl)
    assert match, ddl
    return int(match.group(1))


def test_the_events_ttl_is_the_retention_setting_when_the_migration_runs(settings: Any) -> None:
    configured = settings.EVENTS_RETENTION_DAYS
    assert events_ttl_days() == configured
    try:
        with connections["clickhouse"].schema_editor() as editor:
            settings.EVENTS_RETENTION_DAYS = 30
            ttl_migration.events_ttl_apply(None, editor)
            assert events_ttl_days() == 30
            ttl_migration.events_ttl_revert(None, editor)  # back to 0002's constant
            assert events_ttl_days() == 90
    finally:
        settings.EVENTS_RETENTION_DAYS = configured
        with connections["clickhouse"].schema_editor() as editor:
            ttl_migration.events_ttl_apply(None, editor)
    assert events_ttl_days() == configured
