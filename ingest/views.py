"""``POST /events``: read the request, enforce access (allowlist, rate limit), call the service.

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
from ingest import allowlist, instrumentation, services
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


@csrf_exempt
def events_ingest(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    received_at_ms = time.time_ns() // 1_000_000
    try:
        if request.method != "POST":
            raise ApplicationError("use POST", code="method_not_allowed", status_code=405, headers={"Allow": "POST"})
        client_ip = allowlist.ip_check(request=request, scope="ingest")
        rate_limit_check(client=client_ip)
        result = services.event_batch_ingest(
            body=_body_read(request),
            content_type=request.META.get("CONTENT_TYPE", ""),
            content_encoding=request.META.get("HTTP_CONTENT_ENCODING", ""),
            received_at_ms=received_at_ms,
        )
        response = _json(result.body(), 202)
        code = "accepted"
    except ApplicationError as exc:
        response = _json(exc.body(), exc.status_code, exc.headers)
        code = exc.code
    status = str(response.status_code)
    instrumentation.requests.labels(status=status, code=code).inc()
    instrumentation.request_latency.labels(status=status).observe(time.perf_counter() - started)
    return response
