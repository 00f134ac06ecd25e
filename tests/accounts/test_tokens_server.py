"""Tokens and login throttling against the web process as deployed (gunicorn, two workers).

The server shares the test databases: users made here (committed, transactional tests) log in
there over HTTP. Each test claims its own client address through X-Forwarded-For (one trusted
proxy), so the per-address login budget of one test does not leak into the next.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections

from accounts.models import TokenSession
from analytics_platform.devstack import processes
from tests.support.auth import metrics_reader_grant

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(transaction=True, databases=["default", "clickhouse"])]

SIGNING_KEY = "server-test-signing-key-" + uuid.uuid4().hex + uuid.uuid4().hex
SECRET_KEY = "auth-server-test-secret-key-" + uuid.uuid4().hex + uuid.uuid4().hex
PASSWORD = "a-long-and-unguessed-passphrase"
IP_ATTEMPTS = 8


@pytest.fixture(scope="module")
def web(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    default = connections["default"].settings_dict
    if default["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the server shares the test database: PostgreSQL only (DATABASE_URL)")
    database_url = (
        f"postgres://{default['USER']}:{default['PASSWORD'] or ''}@{default['HOST'] or '127.0.0.1'}:"
        f"{default['PORT'] or 5432}/{default['NAME']}"
    )
    ch = connections["clickhouse"].settings_dict
    var = tmp_path_factory.mktemp("auth-web-var")
    (var / "prom").mkdir()
    port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(var / "prom"),
        "DATABASE_URL": database_url,
        "DATABASE_CONN_MAX_AGE": "0",  # the test run drops this database at the end
        "CLICKHOUSE_HOST": str(ch["HOST"]),
        "CLICKHOUSE_PORT": str(ch["PORT"]),
        "CLICKHOUSE_PASSWORD": str(ch["PASSWORD"]),
        "CLICKHOUSE_DATABASE": str(ch["NAME"]),
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "JWT_SIGNING_KEY": SIGNING_KEY,
        "INGEST_TRUSTED_PROXY_COUNT": "1",
        "INGEST_ALLOWLIST_BUILTIN_CIDRS": "10.0.0.0/8",  # the addresses the tests claim
        "AUTH_THROTTLE_IP_ATTEMPTS": str(IP_ATTEMPTS),
        "AUTH_THROTTLE_USERNAME_FAILURES": "5",
        "METRICS_QUERY_CACHE_SECONDS": "0",
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "2",
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
        cwd=settings.BASE_DIR,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=60, process=process)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


class Http:
    """One client address (X-Forwarded-For through the trusted proxy) talking to the server."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, dict, Any]:
        headers = {"X-Forwarded-For": self.ip}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else None
        finally:
            conn.close()

    def login(self, username: str, password: str = PASSWORD) -> tuple[int, dict, Any]:
        return self.call("POST", "/auth/token", {"username": username, "password": password})

    def metrics(self, token: str | None) -> tuple[int, Any]:
        status, _, body = self.call("GET", "/metrics?metric=events", token=token)
        return status, body


def _code(body: Any) -> str:
    code: str = body["error"]["code"]
    return code


def _reader(username: str = "reader") -> Any:
    from tests.metrics.test_browser import _ensure_builtins

    _ensure_builtins()
    user = get_user_model().objects.create_user(username=username, password=PASSWORD)
    return metrics_reader_grant(user)


def _forge(claims: dict, key: str = SIGNING_KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims_of(token: str) -> dict:
    claims: dict = jwt.decode(token, SIGNING_KEY, algorithms=["HS256"])
    return claims


def test_reader_reads_and_forged_or_expired_tokens_are_refused(web: int) -> None:
    _reader()
    client = Http(web)
    status, _, pair = client.login("reader")
    assert status == 200, pair
    assert client.metrics(pair["access"])[0] == 200
    claims = _claims_of(pair["access"])
    assert claims["exp"] - claims["iat"] == 300  # 5 minutes
    assert _claims_of(pair["refresh"])["exp"] - claims["iat"] == 24 * 3600
    assert TokenSession.objects.filter(pk=claims["sid"], revoked_at__isnull=True).exists()

    status, body = client.metrics(None)
    assert (status, _code(body)) == (401, "not_authenticated")
    # The same claims (a live session) signed with another key, with "none", with another HMAC.
    for forged in (
        _forge(claims, key="not-the-key-" + "z" * 40),
        jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]  # "none" takes no key
        _forge(claims, algorithm="HS512"),
        _forge(claims, key=SECRET_KEY),  # the old signing key is not one any more
    ):
        status, body = client.metrics(forged)
        assert (status, _code(body)) == (401, "token_not_valid"), forged
    expired = {**claims, "iat": int(time.time()) - 700, "exp": int(time.time()) - 100}
    status, body = client.metrics(_forge(expired))
    assert (status, _code(body)) == (401, "token_not_valid")
    # Right key, no session id (how tokens looked before sessions): refused.
    status, body = client.metrics(_forge({k: v for k, v in claims.items() if k != "sid"}))
    assert (status, _code(body)) == (401, "token_revoked")


def test_rotated_refresh_reuse_revokes_the_whole_session(web: int) -> None:
    _reader()
    client = Http(web)
    _, _, first = client.login("reader")
    status, _, second = client.call("POST", "/auth/token/refresh", {"refresh": first["refresh"]})
    assert status == 200, second
    assert second["refresh"] != first["refresh"]
    assert _claims_of(second["access"])["sid"] == _claims_of(first["access"])["sid"]
    assert client.metrics(second["access"])[0] == 200

    # The spent refresh token again (stolen, or replayed): the session ends, for everybody.
    status, headers, body = client.call("POST", "/auth/token/refresh", {"refresh": first["refresh"]})
    assert (status, _code(body)) == (401, "token_reused")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": second["refresh"]})
    assert (status, _code(body)) == (401, "token_revoked")
    for token in (first["access"], second["access"]):
        status, body = client.metrics(token)
        assert (status, _code(body)) == (401, "token_revoked")
    assert TokenSession.objects.get(pk=_claims_of(first["access"])["sid"]).revoked_reason == "reuse"
    # An access token is not a refresh token.
    _, _, other = client.login("reader")
    status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": other["access"]})
    assert (status, _code(body)) == (401, "token_not_valid")


def test_logout_and_password_change_revoke(web: int) -> None:
    user = _reader()
    client = Http(web)
    _, _, pair = client.login("reader")
    status, _, body = client.call("POST", "/auth/logout", token=pair["access"])
    assert status == 204, body
    status, body = client.metrics(pair["access"])
    assert (status, _code(body)) == (401, "token_revoked")
    status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": pair["refresh"]})
    assert (status, _code(body)) == (401, "token_revoked")

    # Logout with the refresh token alone (the access token already lost).
    _, _, pair = client.login("reader")
    assert client.call("POST", "/auth/logout", {"refresh": pair["refresh"]})[0] == 204
    assert _code(client.metrics(pair["access"])[1]) == "token_revoked"
    status, _, body = client.call("POST", "/auth/logout")
    assert (status, _code(body)) == (401, "not_authenticated")

    # A password change ends every session of the user; the new password opens a new one.
    sessions = [client.login("reader")[2] for _ in range(2)]
    user.set_password(PASSWORD + "-changed")
    user.save()
    for pair in sessions:
        assert _code(client.metrics(pair["access"])[1]) == "token_revoked"
    status, _, pair = client.login("reader", PASSWORD + "-changed")
    assert status == 200 and client.metrics(pair["access"])[0] == 200
    # Deactivating the account refuses its live tokens too.
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    assert client.metrics(pair["access"])[0] == 401


def test_an_account_without_the_permission_is_refused(web: int) -> None:
    get_user_model().objects.create_user(username="visitor", password=PASSWORD, is_staff=True)
    client = Http(web)
    status, _, pair = client.login("visitor")
    assert status == 200
    status, body = client.metrics(pair["access"])
    assert (status, _code(body)) == (403, "permission_denied")
    assert "read_metrics" in body["error"]["message"]


def test_the_permission_is_read_on_every_request_however_it_is_held(web: int) -> None:
    """Authentication answers user, session and permission in one query: each way of holding
    accounts.read_metrics counts, and taking it away refuses the next request of a live token."""
    from django.contrib.auth.models import Group, Permission

    from accounts.models import READ_METRICS

    _reader("grouped")
    permission = Permission.objects.get(codename=READ_METRICS.split(".")[1], content_type__app_label="accounts")
    direct = get_user_model().objects.create_user(username="direct", password=PASSWORD)
    direct.user_permissions.add(permission)
    get_user_model().objects.create_superuser(username="root", password=PASSWORD, email="")
    client = Http(web)
    tokens = {}
    for username in ("grouped", "direct", "root"):
        status, _, pair = client.login(username)
        assert status == 200
        tokens[username] = pair["access"]
        assert client.metrics(pair["access"])[0] == 200, username
    # Revoked while the tokens live: the group loses the permission, the direct grant is removed.
    Group.objects.get(name="analysts").permissions.remove(permission)
    direct.user_permissions.remove(permission)
    for username in ("grouped", "direct"):
        status, body = client.metrics(tokens[username])
        assert (status, _code(body)) == (403, "permission_denied"), username
    assert client.metrics(tokens["root"])[0] == 200  # a superuser holds every permission
    Group.objects.get(name="analysts").permissions.add(permission)  # as the migration left it


def test_password_guessing_is_throttled_per_username_and_per_address(web: int) -> None:
    _reader("target")
    guesser = Http(web)
    for attempt in range(5):
        status, _, body = guesser.login("target", f"guess-{attempt}")
        assert (status, _code(body)) == (401, "no_active_account")
    started = time.monotonic()
    status, headers, body = guesser.login("target", PASSWORD)  # even the right password now
    assert time.monotonic() - started < 0.3  # answered before hashing anything
    assert (status, _code(body)) == (429, "login_throttled")
    assert 1 <= int(headers["Retry-After"]) <= 300
    # Per username: another address gets no more guesses on this account ...
    assert Http(web).login("target", PASSWORD)[0] == 429
    # ... while this address may still log in to another account until its own budget is spent.
    _reader("bystander")
    assert guesser.login("bystander")[0] == 200  # attempt 7 of this address
    assert guesser.login("bystander", "nope")[0] == 401  # attempt 8
    status, headers, body = guesser.login("bystander")
    assert (status, _code(body)) == (429, "login_throttled") and int(headers["Retry-After"]) >= 1
    assert Http(web).login("bystander")[0] == 200  # another address is not throttled


def test_expired_session_records_are_pruned(web: int) -> None:
    from accounts.services import token_sessions_prune

    _reader()
    client = Http(web)
    _, _, pair = client.login("reader")
    sid = _claims_of(pair["access"])["sid"]
    assert token_sessions_prune() == 0
    TokenSession.objects.filter(pk=sid).update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert token_sessions_prune() == 1
    # Its tokens now name no session: refused.
    assert _code(client.metrics(pair["access"])[1]) == "token_revoked"
    status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": pair["refresh"]})
    assert (status, _code(body)) == (401, "token_not_valid")


def test_concurrent_refreshes_with_one_token_leave_one_winner_and_a_revoked_session(web: int) -> None:
    """Two workers, eight threads, one refresh token: the compare-and-swap lets exactly one through;
    every other use is reuse, which revokes the session (the winner's new tokens included)."""
    from concurrent.futures import ThreadPoolExecutor

    _reader()
    client = Http(web)
    _, _, pair = client.login("reader")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: client.call("POST", "/auth/token/refresh", {"refresh": pair["refresh"]}), range(8))
        )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] + [401] * 7, results
    assert {_code(body) for status, _, body in results if status == 401} <= {"token_reused", "token_revoked"}
    [winner] = [body for status, _, body in results if status == 200]
    assert _code(client.metrics(winner["access"])[1]) == "token_revoked"
    assert TokenSession.objects.get(pk=_claims_of(pair["access"])["sid"]).revoked_reason == "reuse"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/auth/token", {"username": "u" * 10_000, "password": "x"}, "username"),
        ("/auth/token", {"username": "reader", "password": "p" * 100_000}, "password"),
        ("/auth/token", {"username": ["reader"], "password": PASSWORD}, "username"),
        ("/auth/token", {"password": PASSWORD}, "username"),
        ("/auth/token/refresh", {"refresh": "r" * 10_000}, "refresh"),
        ("/auth/token/refresh", {}, "refresh"),
    ],
)
def test_hostile_login_and_refresh_bodies_are_400_before_any_hashing(
    web: int, path: str, body: dict, field: str
) -> None:
    started = time.monotonic()
    status, _, answer = Http(web).call("POST", path, body)
    assert (status, _code(answer), answer["error"]["field"]) == (400, "invalid_parameter", field)
    assert time.monotonic() - started < 0.3  # no PBKDF2 of a 100 kB password


def test_garbage_refresh_tokens_are_401(web: int) -> None:
    client = Http(web)
    for token in ("", "a.b.c", "not-a-jwt", "eyJhbGciOiJIUzI1NiJ9.e30.", _forge({"token_type": "refresh", "jti": "x"})):
        status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": token})
        assert status in (400, 401), (token, body)
        assert _code(body) in ("invalid_parameter", "token_not_valid"), (token, body)
    # A well-signed refresh token naming a session id that is not a UUID, or none that exists.
    now = int(time.time())
    for sid in ("../../etc", str(uuid.uuid4()), 42):
        claims = {
            "token_type": "refresh",
            "jti": uuid.uuid4().hex,
            "sid": sid,
            "user_id": "1",
            "iat": now,
            "exp": now + 60,
        }
        status, _, body = client.call("POST", "/auth/token/refresh", {"refresh": _forge(claims)})
        assert (status, _code(body)) == (401, "token_not_valid"), sid
