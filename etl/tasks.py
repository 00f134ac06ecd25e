"""Celery tasks: parse arguments, call the service, retry failures with exponential backoff.

``acks_late`` (set globally in settings) means a worker killed mid-export leaves the message on the
broker and another worker runs it again; that is safe because an export replaces its partition.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from etl.locks import LeaseLost
from etl.models import ExportRun
from etl.services import PartitionNotClosed, closed_days_pending, partition_export
from etl.tables import EXPORT_TABLES, UnknownTable, previous_closed_hour

logger = logging.getLogger(__name__)

# Errors a retry cannot fix: fail at once instead of backing off for an hour.
_PERMANENT = (PartitionNotClosed, UnknownTable, LeaseLost)


def _retry_countdown(retries: int) -> float:
    return float(min(settings.ETL_TASK_RETRY_BACKOFF * (2**retries), settings.ETL_TASK_RETRY_BACKOFF_MAX))


@shared_task(bind=True, acks_late=True, name="etl.tasks.export_partition")
def export_partition(self: Task, table: str, day: str, hour: int | None = None) -> dict[str, Any]:
    """Export one partition; on failure retry with backoff ``ETL_TASK_RETRY_BACKOFF * 2**n``."""
    try:
        run = partition_export(
            table=table,
            day=dt.date.fromisoformat(day),
            hour=hour,
            attempt=self.request.retries + 1,
            task_id=self.request.id or "",
        )
    except _PERMANENT:
        raise
    except Exception as exc:
        countdown = _retry_countdown(self.request.retries)
        logger.warning(
            "etl.export_retry",
            extra={"table": table, "day": day, "hour": hour, "retries": self.request.retries, "countdown": countdown},
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=settings.ETL_TASK_MAX_RETRIES) from exc
    if run.status == ExportRun.Status.SKIPPED:
        # Another export holds the partition. It may be alive (then this retry re-exports the same
        # closed partition, harmlessly) or a dead worker's lease that expires within the TTL: come
        # back after a third of it rather than drop the export.
        raise self.retry(
            countdown=max(settings.ETL_LOCK_TTL_SECONDS // 3, 1), max_retries=settings.ETL_TASK_MAX_RETRIES
        )
    return {"run": run.pk, "status": run.status, "rows": run.rows}


@shared_task(name="etl.tasks.export_closed_days")
def export_closed_days() -> list[str]:
    """Beat entry (00:15 UTC): enqueue each closed day of the last ``ETL_CATCHUP_DAYS`` not yet exported.

    Normally that is yesterday. The day is worked out when the task runs, not when beat fired, and
    by looking at what already succeeded, so a worker outage or a message that waited in the queue
    past midnight catches up on every missed day instead of skipping one.
    """
    pending = closed_days_pending(now=timezone.now(), lookback_days=settings.ETL_CATCHUP_DAYS)
    for table, partition in pending:
        export_partition.delay(table, partition.day.isoformat())
    return [partition.lease_key(table) for table, partition in pending]


@shared_task(name="etl.tasks.export_closed_hour")
def export_closed_hour() -> list[str]:
    """Beat entry (hh:05 UTC, with ``ETL_HOURLY``): enqueue the last closed hour of each hourly table.

    Provisional data: the day's export at 00:15 replaces the day as a whole.
    """
    partition = previous_closed_hour(timezone.now())
    tables = sorted(name for name, spec in EXPORT_TABLES.items() if spec.hourly)
    for table in tables:
        export_partition.delay(table, partition.day.isoformat(), partition.hour)
    return [partition.lease_key(table) for table in tables]
