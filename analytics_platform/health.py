"""Liveness and readiness.

``/healthz`` answers as long as the process serves requests (Kubernetes liveness: restart only a
wedged process). ``/readyz`` checks every dependency a request needs, in parallel and each within
``READINESS_TIMEOUT_SECONDS``, and answers 503 naming the ones that are down (Kubernetes
readiness: take the pod out of the Service while its broker or database is unreachable).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from analytics_platform import kafka
from analytics_platform.clickhouse import client_get

_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="readyz")
_admin: AdminClient | None = None
_registry: Any = None  # confluent-kafka's SchemaRegistryClient, made on first use


def check_database() -> None:
    # Runs on a pool thread: close its own connection so idle threads hold none open.
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connections["default"].close()


def check_kafka() -> None:
    global _admin
    if _admin is None:
        _admin = AdminClient(kafka.client_config())
    metadata = _admin.list_topics(timeout=settings.READINESS_TIMEOUT_SECONDS)
    if not metadata.brokers:
        raise RuntimeError("no broker in cluster metadata")


def check_clickhouse() -> None:
    timeout = max(1, int(settings.READINESS_TIMEOUT_SECONDS))
    client = client_get(connect_timeout=timeout, send_receive_timeout=timeout)
    try:
        client.execute("SELECT 1")
    finally:
        client.disconnect()


def check_schema_registry() -> None:
    # A cheap authenticated read (GET /config), without the client's retries: readiness wants now.
    global _registry
    if _registry is None:
        _registry = kafka.schema_registry_client(**{"timeout": settings.READINESS_TIMEOUT_SECONDS, "max.retries": 0})
    _registry.get_compatibility()


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "kafka": check_kafka,
    "clickhouse": check_clickhouse,
    "schema_registry": check_schema_registry,
}


def _timed(check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # noqa: BLE001 - any failure means "down"; the reason is reported
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def dependencies_status() -> dict[str, dict[str, Any]]:
    futures = {name: _pool.submit(_timed, check) for name, check in CHECKS.items()}
    deadline = settings.READINESS_TIMEOUT_SECONDS + 1.0
    results: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=deadline)
        except FutureTimeout:
            results[name] = {"status": "down", "error": f"no answer within {deadline:.1f}s"}
    return results


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    dependencies = dependencies_status()
    ready = all(dep["status"] == "up" for dep in dependencies.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "dependencies": dependencies},
        status=200 if ready else 503,
    )
