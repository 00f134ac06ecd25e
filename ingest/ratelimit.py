"""Per-client rate limiting of ``POST /events`` (429 with ``Retry-After``).

A fixed-window request counter per client address, kept in a cache shared by every process (Redis
in production, a file-based cache on the embedded default, which needs no server). A shared
counter costs a cache round trip (and, file-based, a directory scan), so each process counts
locally and adds its count to the shared one at most every ``INGEST_RATE_LIMIT_SYNC_SECONDS`` per
client, and at once whenever its view of the total is over the limit. The limit is therefore
exact within one process and may be overshot across processes by what the others counted since
their last sync (a fraction of a window): right for protecting the service, not for billing.
A client may also burst up to twice the limit across a window boundary (fixed windows).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.cache import caches

from analytics_platform.errors import ApplicationError

CACHE_ALIAS = "ingest_ratelimit"


@dataclass
class _Client:
    known: int = 0  # the shared total at the last sync
    pending: int = 0  # counted here since then
    synced_at: float = -math.inf


@dataclass
class _Window:
    slot: int
    clients: dict[str, _Client] = field(default_factory=dict)


_lock = threading.Lock()
_window = _Window(slot=-1)


def _shared_add(key: str, delta: int, timeout: int) -> int:
    cache = caches[CACHE_ALIAS]
    if cache.add(key, delta, timeout=timeout):
        return delta
    try:
        return int(cache.incr(key, delta))
    except ValueError:  # expired between add and incr
        cache.add(key, delta, timeout=timeout)
        return delta


def rate_limit_check(*, client: str, limit: int | None = None) -> None:
    """Count one request of ``client`` (an address, or ``key:<id>`` for a write key's clients)
    against ``limit`` per window (default ``INGEST_RATE_LIMIT_REQUESTS``; 0: no limit)."""
    global _window
    limit = settings.INGEST_RATE_LIMIT_REQUESTS if limit is None else limit
    if limit <= 0:
        return
    window = settings.INGEST_RATE_LIMIT_WINDOW_SECONDS
    now = time.time()
    slot = int(now // window)
    with _lock:
        if _window.slot != slot:
            _window = _Window(slot)
        state = _window.clients.get(client)
        if state is None:
            state = _window.clients[client] = _Client()
        state.pending += 1
        count = state.known + state.pending
        if count > limit or now - state.synced_at >= settings.INGEST_RATE_LIMIT_SYNC_SECONDS:
            delta, state.pending, state.synced_at = state.pending, 0, now
            sync = True
        else:
            sync = False
    if sync:
        total = _shared_add(f"ingest:rl:{client}:{slot}", delta, timeout=window + 1)
        with _lock:
            state.known = max(state.known, total)
            count = state.known + state.pending
    if count > limit:
        retry_after = max(1, math.ceil((slot + 1) * window - now))
        raise ApplicationError(
            f"rate limit of {limit} requests per {window}s exceeded for {client}",
            code="rate_limited",
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
