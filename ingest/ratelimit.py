"""Per-client rate limiting of ``POST /events`` (429 with ``Retry-After``).

A fixed-window request counter per client address in a cache shared by every process: Redis in
production, a file-based cache on the embedded default (no server to run). Fixed windows are one
atomic increment per request; a client may burst up to twice the limit across a window boundary,
which is acceptable for protecting the service (it is not a billing quota).
"""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import caches

from analytics_platform.errors import ApplicationError

CACHE_ALIAS = "ingest_ratelimit"


def rate_limit_check(*, client: str) -> None:
    limit = settings.INGEST_RATE_LIMIT_REQUESTS
    if limit <= 0:
        return
    window = settings.INGEST_RATE_LIMIT_WINDOW_SECONDS
    now = time.time()
    slot = int(now // window)
    key = f"ingest:rl:{client}:{slot}"
    cache = caches[CACHE_ALIAS]
    if cache.add(key, 1, timeout=window + 1):
        count = 1
    else:
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=window + 1)
            count = 1
    if count > limit:
        retry_after = max(1, math.ceil((slot + 1) * window - now))
        raise ApplicationError(
            f"rate limit of {limit} requests per {window}s exceeded for {client}",
            code="rate_limited",
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )
