"""Seek latency and picture quality of a view: ten columns of ``view_summaries``.

Single node: ``AddField`` (``ALTER TABLE ... ADD COLUMN``, existing rows read the default 0).
Cluster mode (the router runs only the operation hinted ``cluster_schema``): ``ADD COLUMN IF NOT
EXISTS ... ON CLUSTER`` on ``view_summaries_local`` and the Distributed ``view_summaries``
(``warehouse.add_columns_statements``); a cluster built by 0006 after these columns were declared
in ``warehouse`` already has them, which ``IF NOT EXISTS`` allows. The materialized views name
their columns, so they are unchanged: these figures are read from ``view_summaries`` itself.
"""

from typing import Any

import clickhouse_backend.models
from django.db import migrations

from analytics_platform import warehouse

# Written out, not read from ``warehouse``: a migration keeps the schema of its time.
_COLUMNS = (
    ("seek_count", "UInt32"),
    ("seek_latency_ms", "UInt64"),
    ("bitrate_time_ms", "UInt64"),
    ("bitrate_kbps_ms", "Float64"),
    ("max_bitrate_kbps", "UInt64"),
    ("scale_time_ms", "UInt64"),
    ("upscale_ms", "Float64"),
    ("downscale_ms", "Float64"),
    ("max_upscale", "Float64"),
    ("max_downscale", "Float64"),
)
_FIELDS = {
    "UInt32": clickhouse_backend.models.UInt32Field,
    "UInt64": clickhouse_backend.models.UInt64Field,
    "Float64": clickhouse_backend.models.Float64Field,
}


def cluster_columns_add(apps: Any, schema_editor: Any) -> None:
    table = warehouse.table_named(warehouse.VIEW_SUMMARIES)
    database = schema_editor.connection.settings_dict["NAME"]
    for statement in warehouse.add_columns_statements(table, _COLUMNS, warehouse.cluster_name(), database):
        schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("streams", "0006_cluster_schema")]

    operations = [
        *(
            migrations.AddField(model_name="viewsummary", name=name, field=_FIELDS[kind](default=0))
            for name, kind in _COLUMNS
        ),
        migrations.RunPython(
            cluster_columns_add, migrations.RunPython.noop, hints={"clickhouse": True, "cluster_schema": True}
        ),
    ]
