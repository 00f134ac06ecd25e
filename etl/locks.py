"""Per-partition leases in Django's database: one export of a partition at a time, across hosts.

Acquiring is one conditional ``UPDATE`` (free, or expired): atomic on PostgreSQL (row lock, the
predicate is re-checked) and on SQLite (one writer at a time), so the same code works on the
embedded default and in production without Redis. No transaction stays open while the export
runs; a heartbeat thread renews the lease instead, and a crashed worker's lease simply expires.
Before the destination is changed, the holder checks it still owns the lease (fencing), so an
export that stalled past its lease cannot overwrite a newer one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from django.db import IntegrityError, close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from etl.models import PartitionLease

logger = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The lease expired and someone else took it: the export must not touch the destination."""


class Lease:
    def __init__(self, key: str, ttl: dt.timedelta) -> None:
        self.key = key
        self.ttl = ttl
        self.owner = uuid.uuid4().hex
        self.acquired = False

    def acquire(self) -> bool:
        # Created concurrently by another worker? Then the row exists, which is all we need.
        with suppress(IntegrityError):
            PartitionLease.objects.get_or_create(key=self.key)
        now = timezone.now()
        updated = (
            PartitionLease.objects.filter(key=self.key)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__lte=now))
            .update(owner=self.owner, expires_at=now + self.ttl)
        )
        self.acquired = updated == 1
        return self.acquired

    def renew(self) -> bool:
        updated = PartitionLease.objects.filter(key=self.key, owner=self.owner).update(
            expires_at=timezone.now() + self.ttl
        )
        return updated == 1

    def ensure_held(self) -> None:
        if not self.renew():
            raise LeaseLost(f"lease on {self.key} was lost; another export owns the partition")

    def release(self) -> None:
        PartitionLease.objects.filter(key=self.key, owner=self.owner).update(owner="", expires_at=None)
        self.acquired = False


class _Heartbeat(threading.Thread):
    def __init__(self, lease: Lease) -> None:
        super().__init__(name=f"lease-heartbeat-{lease.key}", daemon=True)
        self.lease = lease
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(self.lease.ttl.total_seconds() / 3, 1.0)
        try:
            while not self.stopped.wait(interval):
                if not self.lease.renew():
                    logger.warning("etl.lease_lost", extra={"key": self.lease.key})
                    return
        finally:
            # This thread opened its own database connection; do not leak it.
            close_old_connections()
            connection.close()


@contextmanager
def partition_lease(key: str, *, ttl_seconds: int) -> Iterator[Lease]:
    """Hold the lease on ``key`` for the block; ``lease.acquired`` is False if someone else has it."""
    lease = Lease(key, dt.timedelta(seconds=ttl_seconds))
    if not lease.acquire():
        yield lease
        return
    heartbeat = _Heartbeat(lease)
    heartbeat.start()
    try:
        yield lease
    finally:
        heartbeat.stopped.set()
        heartbeat.join(timeout=5)
        lease.release()
