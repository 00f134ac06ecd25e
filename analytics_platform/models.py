"""Which rollup partitions a rebuild has finished (``manage.py clickhouse_rollups_rebuild``).

In Django's database, like the export runs (etl/models.py): small, transactional, and it outlives
a killed rebuild, which is what makes the command resumable.
"""

from __future__ import annotations

from django.db import models


class RollupPartitionRebuild(models.Model):
    """One rollup partition re-derived from the raw tables (analytics_platform/rollup_rebuild.py).

    ``definition`` is the digest of the rollup's views and columns at that time
    (``warehouse.rollup_definition``): a partition rebuilt under another definition is stale.
    """

    database = models.CharField(max_length=128, help_text="the ClickHouse database")
    table = models.CharField(max_length=128)
    partition = models.CharField(max_length=16, help_text="ClickHouse partition id (YYYYMMDD or YYYYMM)")
    definition = models.CharField(max_length=64)
    rows = models.BigIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1, help_text="reads redone because rows arrived meanwhile")
    duration_seconds = models.FloatField(default=0)
    rebuilt_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["database", "table", "partition"], name="rollup_rebuild_partition"),
        ]

    def __str__(self) -> str:
        return f"{self.database}.{self.table} {self.partition}"
