"""IP allowlist (scopes, trusted proxies, admin edits taking effect) and per-client rate limiting."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from ingest import ratelimit
from ingest.models import AllowlistRule

# A body that fails validation: passing access control shows as 400, never touching Kafka.
BAD_BODY = b'{"events": [{"eventId": "x"}]}'


def post(client: Client, **meta: Any) -> Any:
    return client.post("/events", data=BAD_BODY, content_type="application/json", **meta)


def allowed(response: Any) -> bool:
    if response.status_code == 403:
        assert response.json()["error"]["code"] == "ip_not_allowed"
        return False
    assert response.status_code == 400, response.content
    return True


@pytest.fixture
def allowlist_on(settings: Any) -> Any:
    settings.INGEST_ALLOWLIST_ENABLED = True
    settings.INGEST_ALLOWLIST_BUILTIN_CIDRS = []
    settings.INGEST_ALLOWLIST_CACHE_SECONDS = 0.5
    settings.INGEST_RATE_LIMIT_REQUESTS = 0
    settings.INGEST_TRUSTED_PROXY_COUNT = 0
    return settings


@pytest.mark.django_db
@pytest.mark.usefixtures("allowlist_on")
class TestAllowlist:
    def test_empty_allowlist_blocks_everything(self, client: Client) -> None:
        for ip in ("127.0.0.1", "10.1.2.3", "::1"):
            assert not allowed(post(client, REMOTE_ADDR=ip))

    def test_embedded_default_allows_loopback_only(self, client: Client, settings: Any) -> None:
        from analytics_platform import settings as defaults

        settings.INGEST_ALLOWLIST_BUILTIN_CIDRS = defaults.INGEST_ALLOWLIST_BUILTIN_CIDRS  # local: loopback
        assert allowed(post(client, REMOTE_ADDR="127.0.0.1"))
        assert allowed(post(client, REMOTE_ADDR="::1"))
        assert not allowed(post(client, REMOTE_ADDR="10.1.2.3"))

    def test_rules_match_by_scope_family_and_enabled_flag(self, client: Client) -> None:
        AllowlistRule.objects.create(cidr="10.0.0.0/8", scope="ingest")
        AllowlistRule.objects.create(cidr="2001:db8::/32", scope="ingest")
        AllowlistRule.objects.create(cidr="192.168.0.0/16", scope="admin")
        AllowlistRule.objects.create(cidr="172.16.0.0/12", scope="ingest", enabled=False)
        assert allowed(post(client, REMOTE_ADDR="10.200.3.4"))
        assert allowed(post(client, REMOTE_ADDR="2001:db8:1::7"))
        assert allowed(post(client, REMOTE_ADDR="::ffff:10.0.0.1"))  # IPv4-mapped IPv6 socket address
        assert not allowed(post(client, REMOTE_ADDR="11.0.0.1"))
        assert not allowed(post(client, REMOTE_ADDR="2001:db9::1"))
        assert not allowed(post(client, REMOTE_ADDR="192.168.1.1"))  # admin scope only
        assert not allowed(post(client, REMOTE_ADDR="172.16.0.1"))  # disabled rule
        assert not allowed(post(client, REMOTE_ADDR="not-an-ip"))

    def test_forwarded_for_is_trusted_only_through_configured_proxies(self, client: Client, settings: Any) -> None:
        AllowlistRule.objects.create(cidr="10.0.0.0/8", scope="ingest")
        # No trusted proxy: the header is the client's word and is ignored.
        assert not allowed(post(client, REMOTE_ADDR="203.0.113.9", HTTP_X_FORWARDED_FOR="10.0.0.5"))
        settings.INGEST_TRUSTED_PROXY_COUNT = 1
        # One proxy: the entry it appended (the last) is the client; the client's own prefix is not.
        assert allowed(post(client, REMOTE_ADDR="172.31.0.2", HTTP_X_FORWARDED_FOR="203.0.113.9, 10.0.0.5"))
        assert not allowed(post(client, REMOTE_ADDR="172.31.0.2", HTTP_X_FORWARDED_FOR="10.0.0.5, 203.0.113.9"))
        assert allowed(post(client, REMOTE_ADDR="10.9.9.9"))  # no header: the socket address
        settings.INGEST_TRUSTED_PROXY_COUNT = 2
        assert allowed(post(client, REMOTE_ADDR="172.31.0.2", HTTP_X_FORWARDED_FOR="10.0.0.5, 203.0.113.9"))
        assert not allowed(
            post(client, REMOTE_ADDR="172.31.0.2", HTTP_X_FORWARDED_FOR="10.0.0.5, 203.0.113.7, 203.0.113.9")
        )

    def test_admin_scope_guards_the_admin(self, client: Client) -> None:
        AllowlistRule.objects.create(cidr="127.0.0.0/8", scope="ingest")
        response = client.get("/admin/login/", REMOTE_ADDR="127.0.0.1")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "ip_not_allowed"
        AllowlistRule.objects.create(cidr="127.0.0.1/32", scope="admin")
        assert client.get("/admin/login/", REMOTE_ADDR="127.0.0.1").status_code == 200
        assert client.get("/admin/login/", REMOTE_ADDR="127.0.0.2").status_code == 403
        assert client.get("/healthz", REMOTE_ADDR="203.0.113.1").status_code == 200  # other views untouched

    def test_admin_edits_take_effect_without_restart(self, client: Client) -> None:
        AllowlistRule.objects.create(cidr="127.0.0.0/8", scope="admin")
        admin_user = get_user_model().objects.create_superuser("ops", password="x" * 20)
        client.force_login(admin_user)
        assert not allowed(post(client, REMOTE_ADDR="10.1.1.1"))

        response = client.post(
            "/admin/ingest/allowlistrule/add/",
            {"cidr": "10.1.0.0/16", "scope": "ingest", "enabled": "on", "note": "gateway fleet"},
        )
        assert response.status_code == 302, response.content
        assert allowed(post(client, REMOTE_ADDR="10.1.1.1"))  # this process: at once

        rule = AllowlistRule.objects.get(cidr="10.1.0.0/16")
        response = client.post(
            f"/admin/ingest/allowlistrule/{rule.pk}/change/",
            {"cidr": "10.1.0.0/16", "scope": "ingest", "note": "gateway fleet"},  # enabled unticked
        )
        assert response.status_code == 302
        assert not allowed(post(client, REMOTE_ADDR="10.1.1.1"))

        # A change made by another process (no signal here) shows up within the cache TTL.
        AllowlistRule.objects.filter(pk=rule.pk).update(enabled=True)
        time.sleep(0.6)
        assert allowed(post(client, REMOTE_ADDR="10.1.1.1"))

    @pytest.mark.parametrize("cidr", ["10.0.0.300/8", "10.0.0.1/8", "banana", "2001:db8::/129", ""])
    def test_admin_refuses_a_bad_cidr(self, client: Client, cidr: str) -> None:
        AllowlistRule.objects.create(cidr="127.0.0.0/8", scope="admin")
        client.force_login(get_user_model().objects.create_superuser("ops", password="x" * 20))
        response = client.post("/admin/ingest/allowlistrule/add/", {"cidr": cidr, "scope": "ingest", "enabled": "on"})
        assert response.status_code == 200  # the form again, with the error
        assert response.context["adminform"].form.errors["cidr"]
        assert not AllowlistRule.objects.filter(scope="ingest").exists()

    def test_admin_stores_the_canonical_cidr(self, client: Client) -> None:
        AllowlistRule.objects.create(cidr="127.0.0.0/8", scope="admin")
        client.force_login(get_user_model().objects.create_superuser("ops", password="x" * 20))
        response = client.post(
            "/admin/ingest/allowlistrule/add/", {"cidr": " 2001:DB8:0::/48 ", "scope": "ingest", "enabled": "on"}
        )
        assert response.status_code == 302
        assert AllowlistRule.objects.get(scope="ingest").cidr == "2001:db8::/48"


@pytest.mark.parametrize(
    "cache",
    [
        pytest.param("file", id="file-cache"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ],
)
def test_rate_limit_is_per_client_with_retry_after(client: Client, settings: Any, tmp_path: Any, cache: str) -> None:
    settings.INGEST_ALLOWLIST_ENABLED = False
    settings.INGEST_RATE_LIMIT_REQUESTS = 3
    settings.INGEST_RATE_LIMIT_WINDOW_SECONDS = 30
    if cache == "redis":
        backend = {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:6379/15"}
    else:
        backend = {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(tmp_path)}
    settings.CACHES = {**settings.CACHES, "ingest_ratelimit": backend}
    ip = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    statuses = [post(client, REMOTE_ADDR=ip).status_code for _ in range(3)]
    assert statuses == [400, 400, 400]
    response = post(client, REMOTE_ADDR=ip)
    if response.status_code != 429:  # the 30 s window rolled over between requests: one retry
        statuses = [post(client, REMOTE_ADDR=ip).status_code for _ in range(3)]
        response = post(client, REMOTE_ADDR=ip)
    assert response.status_code == 429, response.content
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 30
    # The count is shared: a process that has not seen this client yet refuses it too.
    ratelimit._window = ratelimit._Window(slot=-1)
    assert post(client, REMOTE_ADDR=ip).status_code == 429
    other = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    assert post(client, REMOTE_ADDR=other).status_code == 400  # another client is not limited
