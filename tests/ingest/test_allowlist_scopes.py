"""Allowlist scopes switched one by one, IPv4-mapped rules, the dashboards' sessions, and the
admin's "test an address" tool with the effective rules per scope."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.test import Client

from ingest import allowlist
from ingest.models import AllowlistRule
from tests.support.auth import metrics_reader_grant

pytestmark = pytest.mark.django_db

BAD_BODY = b'{"events": [{"eventId": "x"}]}'


@pytest.fixture
def scopes_on(settings: Any) -> Any:
    settings.INGEST_ALLOWLIST_ENABLED = True
    settings.ADMIN_ALLOWLIST_ENABLED = True
    settings.API_ALLOWLIST_ENABLED = True
    settings.INGEST_ALLOWLIST_BUILTIN_CIDRS = []
    settings.INGEST_ALLOWLIST_CACHE_SECONDS = 0
    settings.INGEST_RATE_LIMIT_REQUESTS = 0
    settings.INGEST_TRUSTED_PROXY_COUNT = 0
    return settings


def _statuses(client: Client, ip: str) -> dict[str, int]:
    """What each scope answers ``ip``: 403 is the allowlist, anything else got past it."""
    return {
        "ingest": client.post("/events", data=BAD_BODY, content_type="application/json", REMOTE_ADDR=ip).status_code,
        "admin": client.get("/admin/login/", REMOTE_ADDR=ip).status_code,
        "api": client.get("/metrics", {"metric": "views"}, REMOTE_ADDR=ip).status_code,
        "dashboards": client.get("/dashboards/", REMOTE_ADDR=ip).status_code,
        "docs": client.get("/api/docs/", REMOTE_ADDR=ip).status_code,
        "token": client.post("/auth/token", {}, content_type="application/json", REMOTE_ADDR=ip).status_code,
    }


@pytest.mark.usefixtures("scopes_on")
def test_each_scope_is_switched_on_its_own(client: Client, settings: Any) -> None:
    refused = {"ingest": 403, "admin": 403, "api": 403, "dashboards": 403, "docs": 403, "token": 403}
    assert _statuses(client, "10.0.0.1") == refused
    settings.INGEST_ALLOWLIST_ENABLED = False
    assert _statuses(client, "10.0.0.1") == {**refused, "ingest": 400}
    settings.ADMIN_ALLOWLIST_ENABLED = False
    assert _statuses(client, "10.0.0.1") == {**refused, "ingest": 400, "admin": 200}
    settings.INGEST_ALLOWLIST_ENABLED = True
    settings.ADMIN_ALLOWLIST_ENABLED = True
    settings.API_ALLOWLIST_ENABLED = False
    # Past the allowlist: no token (401), the login page (302), the docs, a bad login body (400).
    assert _statuses(client, "10.0.0.1") == {**refused, "api": 401, "dashboards": 302, "docs": 200, "token": 400}


@pytest.mark.usefixtures("scopes_on")
def test_rules_are_per_scope(client: Client) -> None:
    AllowlistRule.objects.create(cidr="10.1.0.0/16", scope="api")
    AllowlistRule.objects.create(cidr="10.2.0.0/16", scope="admin")
    got = _statuses(client, "10.1.2.3")
    assert (got["ingest"], got["admin"], got["api"], got["dashboards"], got["token"]) == (403, 403, 401, 302, 400)
    got = _statuses(client, "10.2.2.3")
    assert (got["admin"], got["api"], got["dashboards"]) == (200, 403, 403)


@pytest.mark.clickhouse
@pytest.mark.django_db(databases=["default", "clickhouse"])
@pytest.mark.usefixtures("scopes_on")
def test_a_dashboard_session_is_ip_checked(client: Client) -> None:
    """A logged-in reader taking the session cookie to an address outside the api rules is refused;
    staff without the metrics permission are refused inside it."""
    AllowlistRule.objects.create(cidr="10.1.0.0/16", scope="api")
    reader = get_user_model().objects.create_user("reader", password="x" * 20, is_staff=True)
    client.force_login(reader)
    response = client.get("/dashboards/live", REMOTE_ADDR="10.1.0.9")
    assert response.status_code == 403 and b"ip_not_allowed" not in response.content  # staff, no permission
    client.force_login(metrics_reader_grant(reader))
    assert client.get("/dashboards/live", REMOTE_ADDR="10.1.0.9").status_code == 200
    response = client.get("/dashboards/live", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 403 and response.json()["error"]["code"] == "ip_not_allowed"


@pytest.mark.usefixtures("scopes_on")
def test_ipv4_mapped_rules_and_addresses_are_one_address(client: Client) -> None:
    ops = get_user_model().objects.create_superuser("ops", password="x" * 20)
    client.force_login(ops)
    AllowlistRule.objects.create(cidr="127.0.0.0/8", scope="admin")
    response = client.post(
        "/admin/ingest/allowlistrule/add/",
        {"cidr": "::ffff:10.0.0.0/104", "scope": "ingest", "enabled": "on"},
        REMOTE_ADDR="127.0.0.1",
    )
    assert response.status_code == 302, response.content
    assert AllowlistRule.objects.get(scope="ingest").cidr == "10.0.0.0/8"  # stored as what it means
    # A row written around the admin (an old one, the migration's input) matches too.
    AllowlistRule.objects.create(cidr="::ffff:192.0.2.0/120", scope="ingest")
    for ip in ("10.9.8.7", "::ffff:10.9.8.7", "192.0.2.200", "::ffff:192.0.2.200"):
        assert allowlist.ip_allowed(ip=ip, scope="ingest"), ip
    for ip in ("11.0.0.1", "::ffff:11.0.0.1", "::ffff:a00:1:0"):
        assert not allowlist.ip_allowed(ip=ip, scope="ingest"), ip
    assert allowlist.ip_allowed(ip="::ffff:127.0.0.1", scope="admin")


def test_migration_normalises_mapped_rules_and_copies_admin_rules_to_api() -> None:
    AllowlistRule.objects.create(cidr="::ffff:10.0.0.0/104", scope="ingest", note="old")
    AllowlistRule.objects.create(cidr="::ffff:172.16.0.0/108", scope="admin")
    AllowlistRule.objects.create(cidr="172.16.0.0/12", scope="admin")  # the same rule, already IPv4
    AllowlistRule.objects.create(cidr="192.0.2.0/24", scope="admin", enabled=False, note="vpn")
    AllowlistRule.objects.create(cidr="2001:db8::/32", scope="ingest")
    AllowlistRule.objects.create(cidr="192.0.2.0/24", scope="api")  # already there: not copied twice
    migration = importlib.import_module("ingest.migrations.0002_allowlist_api_scope")
    migration.forwards(django_apps, None)
    rules = set(AllowlistRule.objects.values_list("scope", "cidr", "enabled"))
    assert rules == {
        ("ingest", "10.0.0.0/8", True),
        ("ingest", "2001:db8::/32", True),
        ("admin", "172.16.0.0/12", True),
        ("admin", "192.0.2.0/24", False),
        ("api", "172.16.0.0/12", True),
        ("api", "192.0.2.0/24", True),
    }
    assert AllowlistRule.objects.get(scope="api", cidr="172.16.0.0/12").note == "copied from the admin scope"


@pytest.mark.usefixtures("scopes_on")
def test_admin_test_an_address_tool(client: Client, settings: Any) -> None:
    settings.INGEST_ALLOWLIST_BUILTIN_CIDRS = ["127.0.0.0/8"]
    ops = get_user_model().objects.create_user("ops", password="x" * 20, is_staff=True)
    client.force_login(ops)
    url = "/admin/ingest/allowlistrule/test-address/"
    assert client.get(url).status_code == 403  # staff without the allowlist's view permission
    ops.user_permissions.add(*_perms("view_allowlistrule"))
    rule = AllowlistRule.objects.create(cidr="10.0.0.0/8", scope="ingest", note="gateways")
    AllowlistRule.objects.create(cidr="10.5.0.0/16", scope="api", enabled=False)
    settings.ADMIN_ALLOWLIST_ENABLED = True
    settings.API_ALLOWLIST_ENABLED = False

    changelist = client.get("/admin/ingest/allowlistrule/")
    assert url.encode() in changelist.content  # the tool is linked from the list
    response = client.get(url, {"address": "::ffff:10.5.6.7"})
    assert response.status_code == 200
    decisions = {d.scope: d for d in response.context["decisions"]}
    assert decisions["ingest"].allowed and decisions["ingest"].matched.rule_id == rule.pk
    assert not decisions["admin"].allowed and decisions["admin"].matched is None
    assert decisions["api"].allowed and not decisions["api"].enabled  # switched off, and says so
    html = response.content.decode()
    assert f"rule #{rule.pk} 10.0.0.0/8 (gateways)" in html
    assert "refused (403 ip_not_allowed)" in html and "the scope is switched off" in html

    response = client.get(url, {"address": "127.0.0.1"})
    matched = {d.scope: d.matched for d in response.context["decisions"]}
    assert all(m is not None and m.source == "builtin" for m in matched.values())
    # Effective rules: enabled rules and built-ins only, per scope.
    effective = {s["scope"]: [str(e.network) for e in s["entries"]] for s in response.context["scopes"]}
    assert effective == {"ingest": ["127.0.0.0/8", "10.0.0.0/8"], "admin": ["127.0.0.0/8"], "api": ["127.0.0.0/8"]}

    response = client.get(url, {"address": "<script>not-an-ip"})
    assert response.status_code == 200 and not response.context["decisions"]
    assert "is not an IPv4 or IPv6 address" in response.content.decode()
    assert b"<script>not-an-ip" not in response.content  # escaped
    # Search and filters where ops look for them.
    assert client.get("/admin/ingest/allowlistrule/", {"q": "gateways"}).context["cl"].result_count == 1
    assert client.get("/admin/ingest/allowlistrule/", {"scope__exact": "api"}).context["cl"].result_count == 1


def _perms(*codenames: str) -> Any:
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename__in=codenames)
