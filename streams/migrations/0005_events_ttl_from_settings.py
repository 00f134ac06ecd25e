"""The raw events' TTL follows ``EVENTS_RETENTION_DAYS``, the setting ingest's time window uses.

0002 wrote the TTL as a constant (90 days) while ingest accepted any past time: events older than
the TTL were answered 202 and then dropped. Ingest now refuses events older than
``EVENTS_RETENTION_DAYS``; this makes the table keep exactly that long. The setting is read when
the migration runs, not when the module is imported: run ``migrate --database clickhouse`` with the
deployment's environment. A later change of the setting needs the same statement again (see the
README's ingest limits).
"""

from typing import Any

from django.conf import settings
from django.db import migrations

# 0002's TTL, restored on reverse.
_PREVIOUS_DAYS = 90


def _events_ttl_set(schema_editor: Any, days: int) -> None:
    # An int, not text from the environment: nothing but digits reaches the statement.
    schema_editor.execute(f"ALTER TABLE events MODIFY TTL toDateTime(ts) + INTERVAL {int(days)} DAY")


def events_ttl_apply(apps: Any, schema_editor: Any) -> None:
    _events_ttl_set(schema_editor, settings.EVENTS_RETENTION_DAYS)


def events_ttl_revert(apps: Any, schema_editor: Any) -> None:
    _events_ttl_set(schema_editor, _PREVIOUS_DAYS)


class Migration(migrations.Migration):
    dependencies = [("streams", "0004_chained_hour_rollups")]

    operations = [
        migrations.RunPython(events_ttl_apply, events_ttl_revert, hints={"clickhouse": True}),
    ]
