"""IP allowlisting: which client addresses may use a scope (``ingest``, ``admin``).

Rules live in the database (``AllowlistRule``, edited in the admin) plus built-in CIDRs from
settings (loopback on the embedded default, none in production). They are cached per process for
``INGEST_ALLOWLIST_CACHE_SECONDS`` so a request costs a dictionary lookup, and a saved or deleted
rule clears this process's cache at once; other processes see it when their cache expires, i.e.
within seconds and without a restart. With the feature enabled, an empty allowlist allows nobody.

The client address is ``REMOTE_ADDR`` unless ``INGEST_TRUSTED_PROXY_COUNT`` proxies sit in front,
in which case it is the entry of ``X-Forwarded-For`` appended by the outermost trusted proxy (the
same rule as DRF's ``NUM_PROXIES``): entries further left were written by the client and are never
trusted.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from analytics_platform.errors import ApplicationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SCOPES = ("ingest", "admin")
_MAX_CACHED_DECISIONS = 10_000


class _Rules:
    def __init__(self, networks: dict[str, list[Network]], expires: float) -> None:
        self.networks = networks
        self.expires = expires
        self.decisions: dict[tuple[str, str], bool] = {}


_lock = threading.Lock()
_rules: _Rules | None = None


def rules_invalidate() -> None:
    """Forget the cached rules of this process (called when a rule is saved or deleted)."""
    global _rules
    _rules = None


def _rules_load() -> _Rules:
    from ingest.models import AllowlistRule

    networks: dict[str, list[Network]] = {scope: [] for scope in SCOPES}
    for cidr in settings.INGEST_ALLOWLIST_BUILTIN_CIDRS:
        network = ipaddress.ip_network(cidr, strict=False)
        for scope in SCOPES:
            networks[scope].append(network)
    for scope, cidr in AllowlistRule.objects.filter(enabled=True).values_list("scope", "cidr"):
        try:
            networks.setdefault(scope, []).append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # cannot be saved through the admin; ignore a row written around it
    return _Rules(networks, time.monotonic() + settings.INGEST_ALLOWLIST_CACHE_SECONDS)


def _rules_get() -> _Rules:
    global _rules
    rules = _rules
    if rules is None or time.monotonic() >= rules.expires:
        with _lock:
            rules = _rules
            if rules is None or time.monotonic() >= rules.expires:
                rules = _rules = _rules_load()
    return rules


def ip_allowed(*, ip: str, scope: str) -> bool:
    if not settings.INGEST_ALLOWLIST_ENABLED:
        return True
    rules = _rules_get()
    decision = rules.decisions.get((scope, ip))
    if decision is None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        decision = any(address in network for network in rules.networks.get(scope, ()))
        if len(rules.decisions) < _MAX_CACHED_DECISIONS:
            rules.decisions[(scope, ip)] = decision
    return decision


def client_ip_get(request: HttpRequest) -> str:
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = settings.INGEST_TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if not forwarded:
        return remote
    addresses = [part.strip() for part in forwarded.split(",")]
    return addresses[-min(proxies, len(addresses))]


def ip_check(*, request: HttpRequest, scope: str) -> str:
    """Return the client address, or raise 403 ``ip_not_allowed`` when the scope refuses it."""
    ip = client_ip_get(request)
    if not ip_allowed(ip=ip, scope=scope):
        raise ApplicationError(
            f"client address {ip or 'unknown'} is not allowlisted for {scope}",
            code="ip_not_allowed",
            status_code=403,
        )
    return ip


class AdminAllowlistMiddleware:
    """Enforces the ``admin`` scope on every view of the admin site (whatever its URL prefix)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        match = request.resolver_match
        if match is None or "admin" not in match.namespaces:
            return None
        try:
            ip_check(request=request, scope="admin")
        except ApplicationError as exc:
            return JsonResponse(exc.body(), status=exc.status_code)
        return None
