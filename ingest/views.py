"""``POST /events``: read the request, enforce access (a write key or the IP allowlist, rate
limits), call the service; answer CORS preflights for write keys (``ingest/write_keys.py``).

A plain Django view rather than a DRF one: the body is read once as bytes and decoded by msgspec
(DRF's parsers would decode it a second, slower time), and errors still render through
``ApplicationError.body()``, the same JSON shape as every other API error.
"""

from __future__ import annotations

import time

import msgspec
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from analytics_platform.errors import ApplicationError
from ingest import allowlist, instrumentation, services, write_keys
from ingest.ratelimit import rate_limit_check

_encode = msgspec.json.encode


def _json(body: object, status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(_encode(body), status=status, content_type="application/json", headers=headers)


def _body_read(request: HttpRequest) -> bytes:
    """The raw body, refused with 413 before reading when its declared length is over the limit.

    Read from the stream rather than ``request.body``, whose DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)
    is below this endpoint's 5 MiB.
    """
    limit = settings.INGEST_MAX_BODY_BYTES
    declared = request.META.get("CONTENT_LENGTH") or ""
    if not declared and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # No length to check first: the server (gunicorn) de-chunks wsgi.input; read one byte over.
        body = request.META["wsgi.input"].read(limit + 1)
    else:
        try:
            length = int(declared or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise services.body_too_large(limit)
        body = request.read(limit + 1)
    if len(body) > limit:
        raise services.body_too_large(limit)
    return body


def _admit(request: HttpRequest) -> dict[str, str]:
    """Admit the request (write key, or else the IP allowlist) and count it; the CORS headers its
    answer carries (none without a key)."""
    key = write_keys.key_from(request)
    if key is None:
        client_ip = allowlist.ip_check(request=request, scope="ingest")
        rate_limit_check(client=client_ip)
        return {}
    origin = write_keys.origin_of(request)
    grant = write_keys.grant_check(key=key, origin=origin)
    headers = write_keys.cors_headers(origin)
    try:
        rate_limit_check(client=f"key:{key}", limit=grant.rate_limit_requests)
        # Each browser of the key is also held to the per-address limit, as any client is.
        rate_limit_check(client=allowlist.client_ip_get(request))
    except ApplicationError as exc:
        exc.headers = {**(exc.headers or {}), **headers}
        raise
    return headers


def _preflight(request: HttpRequest) -> HttpResponse:
    """A CORS preflight: answered from the key's origins; anything else gets no CORS headers."""
    key = write_keys.key_from(request)
    origin = write_keys.origin_of(request)
    method = request.META.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD", "")
    if key is None:
        raise ApplicationError(
            "cross-origin ingest needs a write key (?writeKey=...)", code="write_key_required", status_code=403
        )
    write_keys.grant_check(key=key, origin=origin)
    if method != "POST":
        raise ApplicationError("only POST is allowed", code="method_not_allowed", status_code=403)
    return HttpResponse(status=204, headers=write_keys.preflight_headers(origin))


@csrf_exempt
def events_ingest(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    received_at_ms = time.time_ns() // 1_000_000
    cors: dict[str, str] = {}
    try:
        if request.method == "OPTIONS":
            response = _preflight(request)
            instrumentation.requests.labels(status="204", code="preflight").inc()
            return response
        if request.method != "POST":
            raise ApplicationError(
                "use POST", code="method_not_allowed", status_code=405, headers={"Allow": "POST, OPTIONS"}
            )
        cors = _admit(request)
        result = services.event_batch_ingest(
            body=_body_read(request),
            content_type=request.META.get("CONTENT_TYPE", ""),
            content_encoding=request.META.get("HTTP_CONTENT_ENCODING", ""),
            received_at_ms=received_at_ms,
        )
        response = _json(result.body(), 202, cors or None)
        code = "accepted"
    except ApplicationError as exc:
        response = _json(exc.body(), exc.status_code, {**cors, **(exc.headers or {})} or None)
        code = exc.code
    status = str(response.status_code)
    instrumentation.requests.labels(status=status, code=code).inc()
    instrumentation.request_latency.labels(status=status).observe(time.perf_counter() - started)
    return response
