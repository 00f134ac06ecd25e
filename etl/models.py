"""What the exports did (``ExportRun``) and who may export a partition right now (``PartitionLease``).

Both live in Django's own database (SQLite locally, PostgreSQL in production), not in ClickHouse:
they are small, transactional, and the admin shows them.
"""

from __future__ import annotations

from django.db import models


class ExportRun(models.Model):
    """One attempt to export one partition of one table; a retry is a new row."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        SKIPPED = "skipped", "skipped"  # another export held the partition's lease
        DRY_RUN = "dry_run", "dry run"

    table = models.CharField(max_length=64)
    day = models.DateField()
    hour = models.PositiveSmallIntegerField(null=True, blank=True, help_text="empty: the whole day")
    destination = models.CharField(max_length=512, help_text="BigQuery table id or local path")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    rows = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0, help_text="size of the Parquet file loaded")
    duration_seconds = models.FloatField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)
    task_id = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["table", "day", "hour", "status"], name="etl_run_partition_status")]

    def __str__(self) -> str:
        suffix = f" {self.hour:02d}h" if self.hour is not None else ""
        return f"{self.table} {self.day}{suffix} {self.status}"


class PartitionLease(models.Model):
    """A renewable lease per partition: at most one export of a partition runs at a time.

    A lease rather than ``select_for_update``: the lock must work across worker processes and hosts
    on SQLite (no row locks) as on PostgreSQL, must not keep a transaction open for the minutes an
    export takes, and must free itself when a worker dies (it expires unless renewed).
    """

    key = models.CharField(max_length=128, unique=True, help_text="<table>/<day>[/<hour>]")
    owner = models.CharField(max_length=64, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} ({self.owner or 'free'})"
