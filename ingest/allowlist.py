"""IP allowlisting: which client addresses may use a scope (``ingest``, ``admin``, ``api``).

Scopes: ``ingest`` is POST /events (checked by its view); ``admin`` is every view of the admin
site; ``api`` is GET /metrics, /auth/*, the dashboards and the API docs (both by
``AllowlistMiddleware``). Each is switched on its own (``<SCOPE>_ALLOWLIST_ENABLED``).

Rules live in the database (``AllowlistRule``, edited in the admin) plus built-in CIDRs from
settings (loopback on the embedded default, none in production), which apply to every scope. They
are cached per process for ``INGEST_ALLOWLIST_CACHE_SECONDS`` so a request costs a dictionary
lookup, and a saved or deleted rule clears this process's cache at once; other processes see it
when their cache expires, i.e. within seconds and without a restart. With a scope enabled, an
empty allowlist allows nobody.

IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what a dual-stack socket reports for an IPv4 client) is
one address with its IPv4 form: both addresses and rules (``::ffff:10.0.0.0/104``) are normalised
to IPv4 before matching (``network_normalize``, ``address_normalize``).

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
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from analytics_platform.errors import ApplicationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

SCOPES = ("ingest", "admin", "api")
#: The setting that switches each scope.
SCOPE_SWITCHES = {
    "ingest": "INGEST_ALLOWLIST_ENABLED",
    "admin": "ADMIN_ALLOWLIST_ENABLED",
    "api": "API_ALLOWLIST_ENABLED",
}
#: Views of the ``api`` scope outside the dashboards' ``metrics`` namespace, by URL name.
API_URL_NAMES = frozenset(
    {"metrics-query", "auth-token", "auth-token-refresh", "auth-logout", "api-schema", "api-docs", "api-redoc"}
)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_MAX_CACHED_DECISIONS = 10_000


def network_normalize(network: Network) -> Network:
    """An IPv4-mapped IPv6 network (``::ffff:10.0.0.0/104``) as the IPv4 network it means."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def address_normalize(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def scope_enabled(scope: str) -> bool:
    return bool(getattr(settings, SCOPE_SWITCHES[scope]))


@dataclass(frozen=True)
class Entry:
    """One network of a scope and where it comes from (a rule, or the built-in CIDRs)."""

    network: Network
    source: str  # "rule" or "builtin"
    rule_id: int | None = None
    note: str = ""

    def describe(self) -> str:
        if self.source == "builtin":
            return f"built-in {self.network} (INGEST_ALLOWLIST_BUILTIN_CIDRS)"
        return f"rule #{self.rule_id} {self.network}" + (f" ({self.note})" if self.note else "")


class _Rules:
    def __init__(self, entries: dict[str, list[Entry]], expires: float) -> None:
        self.entries = entries
        self.expires = expires
        self.decisions: dict[tuple[str, str], bool] = {}


_lock = threading.Lock()
_rules: _Rules | None = None


def rules_invalidate() -> None:
    """Forget the cached rules of this process (called when a rule is saved or deleted)."""
    global _rules
    _rules = None


def rules_effective() -> dict[str, list[Entry]]:
    """Every scope's enabled networks, read now from the settings and the database."""
    from ingest.models import AllowlistRule

    entries: dict[str, list[Entry]] = {scope: [] for scope in SCOPES}
    for cidr in settings.INGEST_ALLOWLIST_BUILTIN_CIDRS:
        network = network_normalize(ipaddress.ip_network(cidr, strict=False))
        for scope in SCOPES:
            entries[scope].append(Entry(network, "builtin"))
    rows = AllowlistRule.objects.filter(enabled=True).values_list("pk", "scope", "cidr", "note")
    for pk, scope, cidr, note in rows:
        try:
            network = network_normalize(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # cannot be saved through the admin; ignore a row written around it
        entries.setdefault(scope, []).append(Entry(network, "rule", pk, note))
    return entries


def _rules_get() -> _Rules:
    global _rules
    rules = _rules
    if rules is None or time.monotonic() >= rules.expires:
        with _lock:
            rules = _rules
            if rules is None or time.monotonic() >= rules.expires:
                rules = _rules = _Rules(rules_effective(), time.monotonic() + settings.INGEST_ALLOWLIST_CACHE_SECONDS)
    return rules


def _match(address: Address, entries: list[Entry]) -> Entry | None:
    return next((entry for entry in entries if address in entry.network), None)


def ip_allowed(*, ip: str, scope: str) -> bool:
    if not scope_enabled(scope):
        return True
    rules = _rules_get()
    decision = rules.decisions.get((scope, ip))
    if decision is None:
        try:
            address = address_normalize(ipaddress.ip_address(ip))
        except ValueError:
            return False
        decision = _match(address, rules.entries.get(scope, [])) is not None
        if len(rules.decisions) < _MAX_CACHED_DECISIONS:
            rules.decisions[(scope, ip)] = decision
    return decision


@dataclass(frozen=True)
class ScopeDecision:
    scope: str
    enabled: bool
    allowed: bool
    matched: Entry | None


def address_explain(*, ip: str) -> list[ScopeDecision]:
    """For the admin's "test an address": each scope's answer for ``ip`` and the entry that matched.

    Raises ``ValueError`` for something that is not an IP address.
    """
    address = address_normalize(ipaddress.ip_address(ip.strip()))
    entries = rules_effective()
    decisions = []
    for scope in SCOPES:
        matched = _match(address, entries[scope])
        enabled = scope_enabled(scope)
        decisions.append(ScopeDecision(scope, enabled, not enabled or matched is not None, matched))
    return decisions


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


def view_scope(request: HttpRequest) -> str | None:
    """The scope ``AllowlistMiddleware`` enforces on the resolved view (None: not its business)."""
    match = request.resolver_match
    if match is None:
        return None
    if "admin" in match.namespaces:
        return "admin"
    if "metrics" in match.namespaces or match.url_name in API_URL_NAMES:
        return "api"
    return None


class AllowlistMiddleware:
    """Enforces the ``admin`` scope on the admin site (whatever its URL prefix) and the ``api`` scope
    on the API, its docs and the dashboards (session-authenticated pages included)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any, view_kwargs: Any
    ) -> HttpResponse | None:
        scope = view_scope(request)
        if scope is None:
            return None
        try:
            ip_check(request=request, scope=scope)
        except ApplicationError as exc:
            return JsonResponse(exc.body(), status=exc.status_code)
        return None
