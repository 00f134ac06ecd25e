"""Write keys: browser ingest admitted by a site's public key and its origins, CORS, the key's own
rate limit; server-to-server ingest without a key keeps the IP allowlist."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django.utils import timezone

from analytics_platform.devstack import processes
from ingest import ratelimit, write_keys
from ingest.models import WriteKey

pytestmark = pytest.mark.django_db

BAD_BODY = b'{"events": [{"eventId": "x"}]}'  # admitted: a 400 from validation, Kafka untouched
SITE = "https://www.example.com"


@pytest.fixture(autouse=True)
def closed_allowlist(settings: Any) -> Iterator[Any]:
    """An allowlist that admits no address: only a key lets a request in."""
    settings.INGEST_ALLOWLIST_ENABLED = True
    settings.INGEST_ALLOWLIST_BUILTIN_CIDRS = []
    settings.INGEST_RATE_LIMIT_REQUESTS = 0
    settings.INGEST_WRITE_KEY_CACHE_SECONDS = 60
    write_keys.cache_clear()
    ratelimit._window = ratelimit._Window(slot=-1)
    yield settings
    write_keys.cache_clear()


@pytest.fixture
def key() -> WriteKey:
    return WriteKey.objects.create(
        name="web player", allowed_origins=f"{SITE}\nhttps://*.example.org", rate_limit_requests=0
    )


def post(client: Client, query: str = "", **meta: Any) -> Any:
    return client.post(f"/events{query}", data=BAD_BODY, content_type="application/json", **meta)


def code(response: Any) -> str:
    return str(response.json()["error"]["code"])


def test_a_known_key_from_its_origin_is_admitted_with_cors_headers(client: Client, key: WriteKey) -> None:
    response = post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE)
    assert response.status_code == 400, response.content  # past access control
    assert response["Access-Control-Allow-Origin"] == SITE
    assert response["Vary"] == "Origin"
    assert "Retry-After" in response["Access-Control-Expose-Headers"]
    # The header form works too (a server-side proxy may prefer it); the query string is the SDK's.
    assert post(client, HTTP_X_WRITE_KEY=key.key, HTTP_ORIGIN=SITE).status_code == 400


def test_subdomain_wildcards_match_subdomains_only(client: Client, key: WriteKey) -> None:
    for origin, admitted in (
        ("https://cdn.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),  # "*." means a subdomain
        ("https://evilexample.org", False),
        ("https://cdn.example.org.evil.com", False),
        ("http://cdn.example.org", False),  # another scheme
        ("https://www.example.com:8443", False),  # another port
        ("HTTPS://WWW.EXAMPLE.COM", True),  # origins are case-insensitive
    ):
        response = post(client, f"?writeKey={key.key}", HTTP_ORIGIN=origin)
        assert (response.status_code == 400) is admitted, (origin, response.content)


def test_unknown_revoked_and_wrong_origin_keys_are_refused_without_cors(client: Client, key: WriteKey) -> None:
    cases = [
        ("?writeKey=wk_nobody", SITE, 401, "write_key_unknown"),
        ("?writeKey=" + "x" * 5000, SITE, 401, "write_key_unknown"),
        (f"?writeKey={key.key}", "https://attacker.example.net", 403, "origin_not_allowed"),
        (f"?writeKey={key.key}", "null", 403, "origin_not_allowed"),  # a sandboxed iframe, a file: page
    ]
    for query, origin, status, error in cases:
        response = post(client, query, HTTP_ORIGIN=origin)
        assert (response.status_code, code(response)) == (status, error), query[:40]
        assert "Access-Control-Allow-Origin" not in response
    response = post(client, f"?writeKey={key.key}")  # no Origin: not a browser
    assert (response.status_code, code(response)) == (403, "origin_required")
    WriteKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    write_keys.cache_clear()
    response = post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE)
    assert (response.status_code, code(response)) == (403, "write_key_revoked")


def test_without_a_key_the_ip_allowlist_decides(client: Client, key: WriteKey) -> None:
    response = post(client, HTTP_ORIGIN=SITE, REMOTE_ADDR="203.0.113.9")
    assert (response.status_code, code(response)) == (403, "ip_not_allowed")


def test_preflight_is_answered_from_the_keys_origins(client: Client, key: WriteKey) -> None:
    def preflight(query: str, origin: str, method: str = "POST") -> Any:
        return client.options(
            f"/events{query}",
            HTTP_ORIGIN=origin,
            HTTP_ACCESS_CONTROL_REQUEST_METHOD=method,
            HTTP_ACCESS_CONTROL_REQUEST_HEADERS="content-type",
        )

    response = preflight(f"?writeKey={key.key}", SITE)
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == SITE
    assert response["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in response["Access-Control-Allow-Headers"]
    assert int(response["Access-Control-Max-Age"]) > 0
    for query, origin, method, error in (
        (f"?writeKey={key.key}", "https://attacker.example.net", "POST", "origin_not_allowed"),
        ("?writeKey=wk_nobody", SITE, "POST", "write_key_unknown"),
        ("", SITE, "POST", "write_key_required"),
        (f"?writeKey={key.key}", SITE, "DELETE", "method_not_allowed"),
    ):
        response = preflight(query, origin, method)
        assert response.status_code in (401, 403) and code(response) == error, (query, origin, method)
        assert "Access-Control-Allow-Origin" not in response


def test_each_key_has_its_own_rate_limit(client: Client, key: WriteKey, settings: Any) -> None:
    settings.INGEST_RATE_LIMIT_SYNC_SECONDS = 0
    settings.INGEST_RATE_LIMIT_WINDOW_SECONDS = 60
    key.rate_limit_requests = 3
    key.save()
    other = WriteKey.objects.create(name="other", allowed_origins=SITE, rate_limit_requests=3)
    statuses = [post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE).status_code for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]
    limited = post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE)
    assert code(limited) == "rate_limited" and int(limited["Retry-After"]) >= 1
    assert limited["Access-Control-Allow-Origin"] == SITE  # so the SDK can read the 429 and back off
    assert post(client, f"?writeKey={other.key}", HTTP_ORIGIN=SITE).status_code == 400  # its own budget


def test_origins_are_validated_and_normalised() -> None:
    key = WriteKey(name="x", allowed_origins="https://A.example.com/\nhttp://localhost:8000, https://*.cdn.example")
    key.full_clean()
    assert key.allowed_origins == "https://a.example.com\nhttp://localhost:8000\nhttps://*.cdn.example"
    for bad in ("https://a.example.com/path", "a.example.com", "ftp://a.example.com", "https://*", "*"):
        with pytest.raises(ValidationError):
            WriteKey(name="x", allowed_origins=bad).full_clean()
    assert WriteKey().key != WriteKey().key and WriteKey().key.startswith("wk_")


def test_revoking_in_the_admin_applies_at_once(client: Client, key: WriteKey, settings: Any) -> None:
    settings.ADMIN_ALLOWLIST_ENABLED = False
    assert post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE).status_code == 400  # cached as valid
    ops = get_user_model().objects.create_superuser("ops", "ops@example.com", "a-long-test-password")
    admin = Client()
    admin.force_login(ops)
    page = admin.get(f"/admin/ingest/writekey/{key.pk}/change/")
    assert page.status_code == 200 and key.key.encode() in page.content and b"createTracker" in page.content
    response = admin.post("/admin/ingest/writekey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True)
    assert response.status_code == 200
    assert WriteKey.objects.get(pk=key.pk).revoked_at is not None
    assert code(post(client, f"?writeKey={key.key}", HTTP_ORIGIN=SITE)) == "write_key_revoked"


# --- through the web process as deployed -------------------------------------------------------


@pytest.fixture(scope="module")
def web(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    default = connections["default"].settings_dict
    if default["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the server shares the test database: PostgreSQL only (DATABASE_URL)")
    with django_db_blocker.unblock():
        keys = {
            "live": WriteKey.objects.create(name="live", allowed_origins=SITE, rate_limit_requests=0).key,
            "revoked": WriteKey.objects.create(name="revoked", allowed_origins=SITE, revoked_at=timezone.now()).key,
        }
    database_url = (
        f"postgres://{default['USER']}:{default['PASSWORD'] or ''}@{default['HOST'] or '127.0.0.1'}:"
        f"{default['PORT'] or 5432}/{default['NAME']}"
    )
    var = tmp_path_factory.mktemp("write-keys-web")
    (var / "prom").mkdir()
    port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(django_settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(var / "prom"),
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",
        "INGEST_ALLOWLIST_BUILTIN_CIDRS": "192.0.2.0/24",  # not loopback: only keys admit the test
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
        ],
        env=env,
        cwd=django_settings.BASE_DIR,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=60, process=process)
        yield {"port": port, **keys}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        with django_db_blocker.unblock():
            WriteKey.objects.filter(key__in=keys.values()).delete()


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response
    finally:
        connection.close()


def test_write_keys_over_http(web: dict) -> None:
    port, json_type = web["port"], {"Content-Type": "application/json"}
    preflight = _request(
        port,
        "OPTIONS",
        f"/events?writeKey={web['live']}",
        {"Origin": SITE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )
    assert preflight.status == 204 and preflight.getheader("Access-Control-Allow-Origin") == SITE
    admitted = _request(port, "POST", f"/events?writeKey={web['live']}", {**json_type, "Origin": SITE}, BAD_BODY)
    assert admitted.status == 400 and admitted.getheader("Access-Control-Allow-Origin") == SITE
    for path, origin, status in (
        (f"/events?writeKey={web['revoked']}", SITE, 403),
        (f"/events?writeKey={web['live']}", "https://attacker.example.net", 403),
        ("/events?writeKey=wk_nobody", SITE, 401),
        ("/events", SITE, 403),  # no key, and loopback is not allowlisted here
    ):
        refused = _request(port, "POST", path, {**json_type, "Origin": origin}, BAD_BODY)
        assert refused.status == status, (path, origin)
        assert refused.getheader("Access-Control-Allow-Origin") is None
