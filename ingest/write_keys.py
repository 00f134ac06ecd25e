"""Per-site public write keys for browser ingest, and the CORS answers that go with them.

A request to ``POST /events`` that carries a key (``?writeKey=wk_...``, or the ``X-Write-Key``
header) is admitted by the key rather than by the IP allowlist: the key must exist, not be
revoked, and the request must come from one of the key's origins (browsers send ``Origin`` on
every POST, beacons and keepalive fetches included); then the key's own rate limit applies, shared
by all of its clients. The key is in the query string so that a CORS preflight, which carries no
custom header and no body, can be answered from the key's origins too.

Keys are public (they sit in the sites' pages): the origin check stops other sites' pages from
posting with a key, not a script that forges ``Origin``; the rate limit bounds what such a script
can do. Lookups are cached per process for ``INGEST_WRITE_KEY_CACHE_SECONDS`` (unknown keys too,
boundedly, so that guessing keys does not reach the database per request); saving or revoking a
key in the admin clears this process's cache at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

from analytics_platform.errors import ApplicationError

MAX_KEY_CHARS = 64
_MAX_CACHED = 10_000
PREFLIGHT_MAX_AGE_SECONDS = 600
ALLOWED_REQUEST_HEADERS = "Content-Type, Content-Encoding, X-Write-Key"


@dataclass(frozen=True)
class Grant:
    """A key as ingest needs it (a snapshot, not the model)."""

    key_id: int
    name: str
    origins: tuple[str, ...]
    rate_limit_requests: int
    revoked: bool

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.rstrip("/").lower()
        for allowed in self.origins:
            if allowed == origin:
                return True
            scheme, _, host = allowed.partition("://*.")
            if host and origin.startswith(scheme + "://") and origin.endswith("." + host):
                return True
        return False


_lock = threading.Lock()
_cache: dict[str, tuple[Grant | None, float]] = {}


def cache_clear() -> None:
    with _lock:
        _cache.clear()


def _load(key: str) -> Grant | None:
    from ingest.models import WriteKey, origins_parse

    row = WriteKey.objects.filter(key=key).first()
    if row is None:
        return None
    return Grant(
        key_id=row.pk,
        name=row.name,
        origins=tuple(origins_parse(row.allowed_origins)),
        rate_limit_requests=row.rate_limit_requests,
        revoked=row.revoked_at is not None,
    )


def grant_get(key: str) -> Grant | None:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[1] > now:
        return hit[0]
    grant = _load(key)
    with _lock:
        if len(_cache) >= _MAX_CACHED:
            _cache.clear()  # a flood of made-up keys: start over rather than grow
        _cache[key] = (grant, now + settings.INGEST_WRITE_KEY_CACHE_SECONDS)
    return grant


def key_from(request: HttpRequest) -> str | None:
    """The write key the request names, or None when it names none (server-to-server ingest)."""
    key = request.GET.get("writeKey") or request.META.get("HTTP_X_WRITE_KEY") or ""
    return key or None


def origin_of(request: HttpRequest) -> str:
    return request.META.get("HTTP_ORIGIN", "")


def grant_check(*, key: str, origin: str) -> Grant:
    """The key's grant for a request from ``origin``, or the 4xx that refuses it."""
    grant = grant_get(key) if len(key) <= MAX_KEY_CHARS else None
    if grant is None:
        raise ApplicationError("unknown write key", code="write_key_unknown", status_code=401)
    if grant.revoked:
        raise ApplicationError("this write key was revoked", code="write_key_revoked", status_code=403)
    if not origin:
        raise ApplicationError(
            "a write key is for browsers: the request has no Origin header", code="origin_required", status_code=403
        )
    if not grant.origin_allowed(origin):
        raise ApplicationError(
            f"origin {origin[:200]} is not allowed for this write key", code="origin_not_allowed", status_code=403
        )
    return grant


def cors_headers(origin: str) -> dict[str, str]:
    """On every answer to an admitted origin, errors included, so that the SDK can read them."""
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": "Retry-After"}


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        **cors_headers(origin),
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": ALLOWED_REQUEST_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
    }
