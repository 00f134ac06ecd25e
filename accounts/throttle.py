"""Login throttling, per client address and per username, in the shared cache.

Two fixed windows of ``AUTH_THROTTLE_WINDOW_SECONDS``: every attempt from an address counts
against ``AUTH_THROTTLE_IP_ATTEMPTS`` (password spraying from one place), every failed attempt on a
username against ``AUTH_THROTTLE_USERNAME_FAILURES`` (guessing one account from many places). The
check runs before the password is hashed, so a throttled attempt costs a cache round trip instead
of ~0.5 CPU-s of PBKDF2 (bench/bench_login_throttle.py). The counters live in the
``auth_throttle`` cache: Redis in production (shared by every process), a file cache locally.
A fixed window lets a patient guesser spend twice the budget across a window boundary: the bound
is still two budgets per window, and it needs no per-attempt bookkeeping.
"""

from __future__ import annotations

import hashlib
import math
import time

from django.conf import settings
from django.core.cache import caches


class LoginThrottled(Exception):
    """Too many attempts: answered 429 ``login_throttled`` with ``Retry-After`` (seconds)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts, retry after {retry_after} s")
        self.retry_after = retry_after


def _keys(*, ip: str | None, username: str | None) -> tuple[str | None, str | None, int]:
    window = settings.AUTH_THROTTLE_WINDOW_SECONDS
    now = time.time()
    slot = int(now // window)
    retry_after = max(1, math.ceil((slot + 1) * window - now))
    ip_key = f"login:ip:{ip}:{slot}" if ip else None
    user_key = None
    if username:
        # Usernames are free text: hash them into a cache-safe key; case-folded so "Admin" and
        # "admin" share the budget (ModelBackend matches case-sensitively, guessers need not).
        digest = hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]
        user_key = f"login:user:{digest}:{slot}"
    return ip_key, user_key, retry_after


def login_attempt_begin(*, ip: str | None, username: str | None) -> None:
    """Count this attempt against its address; raise ``LoginThrottled`` when either budget is spent."""
    cache = caches["auth_throttle"]
    ip_key, user_key, retry_after = _keys(ip=ip, username=username)
    timeout = settings.AUTH_THROTTLE_WINDOW_SECONDS + 5
    if ip_key is not None and settings.AUTH_THROTTLE_IP_ATTEMPTS > 0:
        cache.add(ip_key, 0, timeout)
        if cache.incr(ip_key) > settings.AUTH_THROTTLE_IP_ATTEMPTS:
            raise LoginThrottled(retry_after)
    limit = settings.AUTH_THROTTLE_USERNAME_FAILURES
    if user_key is not None and limit > 0 and (cache.get(user_key) or 0) >= limit:
        raise LoginThrottled(retry_after)


def login_attempt_end(*, username: str | None, success: bool) -> None:
    """A failure counts against the username; a success clears its count (typos then a login)."""
    if not username or settings.AUTH_THROTTLE_USERNAME_FAILURES <= 0:
        return
    cache = caches["auth_throttle"]
    _, user_key, _ = _keys(ip=None, username=username)
    assert user_key is not None
    if success:
        cache.delete(user_key)
        return
    cache.add(user_key, 0, settings.AUTH_THROTTLE_WINDOW_SECONDS + 5)
    cache.incr(user_key)
