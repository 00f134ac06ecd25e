"""The foundation: health endpoints against real dependencies, settings, the admin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import Client

pytestmark = [pytest.mark.django_db(databases=["default", "clickhouse"])]


def test_healthz_answers_without_dependencies(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.postgres
def test_django_tables_live_in_postgresql() -> None:
    # make test points DATABASE_URL at the machine's PostgreSQL: the production database engine.
    assert connection.vendor == "postgresql"


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_readyz_reports_every_dependency_up(client: Client, kafka_broker, schema_registry) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["dependencies"]) == {"database", "kafka", "clickhouse", "schema_registry"}
    assert all(dep["status"] == "up" for dep in body["dependencies"].values())


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_readyz_names_the_broker_when_it_is_stopped(client: Client, settings, schema_registry) -> None:
    from analytics_platform import health
    from analytics_platform.devstack import processes

    broker = processes.broker_start()
    settings.KAFKA_BOOTSTRAP_SERVERS = broker.address
    settings.READINESS_TIMEOUT_SECONDS = 1.5
    health._admin = None  # a client bound to this broker, not the session's
    try:
        assert client.get("/readyz").status_code == 200
        broker.stop()
        response = client.get("/readyz")
        body = response.json()
        assert response.status_code == 503
        assert body["status"] == "unavailable"
        assert body["dependencies"]["kafka"]["status"] == "down"
        assert body["dependencies"]["database"]["status"] == "up"
        assert body["dependencies"]["clickhouse"]["status"] == "up"
    finally:
        broker.kill()
        health._admin = None


@pytest.mark.clickhouse
def test_readyz_names_clickhouse_when_it_is_unreachable(
    client: Client, settings, kafka_broker, schema_registry
) -> None:
    from analytics_platform.devstack import processes

    clickhouse = settings.DATABASES["clickhouse"]
    port = clickhouse["PORT"]
    clickhouse["PORT"] = processes.free_port()  # nothing listens there
    try:
        response = client.get("/readyz")
    finally:
        clickhouse["PORT"] = port
    assert response.status_code == 503
    assert response.json()["dependencies"]["clickhouse"]["status"] == "down"


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_readyz_names_the_schema_registry_when_it_is_unreachable(client: Client, settings, kafka_broker) -> None:
    from analytics_platform import health
    from analytics_platform.devstack import processes

    settings.SCHEMA_REGISTRY_CLIENT = {"url": f"http://127.0.0.1:{processes.free_port()}"}  # nothing listens
    health._registry = None
    try:
        response = client.get("/readyz")
    finally:
        health._registry = None
    assert response.status_code == 503
    body = response.json()
    assert body["dependencies"]["schema_registry"]["status"] == "down"
    assert body["dependencies"]["kafka"]["status"] == "up"


def test_admin_login_page_renders(client: Client) -> None:
    response = client.get("/admin/login/")
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


PRODUCTION_REQUIRED = {
    "DJANGO_SECRET_KEY": "k3y-0f-f1fty-chars-for-the-production-settings-test",
    "DJANGO_ALLOWED_HOSTS": "analytics.example.com",
    "DATABASE_URL": "postgres://analytics@db.example.com:5432/analytics",
    "CLICKHOUSE_HOST": "clickhouse.example.com",
    "CLICKHOUSE_PASSWORD": "secret",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.example.com:9093",
    "SCHEMA_REGISTRY_URL": "https://schema-registry.example.com:8081",
    "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "analytics:secret",
    "CELERY_BROKER_URL": "rediss://redis.example.com:6380/0",
    "BIGQUERY_PROJECT": "analytics-prod",
    "JWT_SIGNING_KEY": "jwt-s1gn1ng-k3y-0f-f1fty-chars-for-the-production-test",
}


def test_production_refuses_to_start_without_each_secret_and_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import analytics_platform.settings as settings_module

    monkeypatch.setenv("ANALYTICS_ENV", "production")
    for name in PRODUCTION_REQUIRED:
        monkeypatch.delenv(name, raising=False)
    try:
        # Each required variable, in the order settings reads them, is named when it is missing.
        for name, value in PRODUCTION_REQUIRED.items():
            with pytest.raises(ImproperlyConfigured, match=name):
                importlib.reload(settings_module)
            monkeypatch.setenv(name, value)
        importlib.reload(settings_module)
        assert settings_module.SESSION_COOKIE_SECURE is True
        assert settings_module.SECURE_SSL_REDIRECT is True
        assert settings_module.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DJANGO_DEBUG", "true", "DJANGO_DEBUG must be off"),
        ("DJANGO_SECRET_KEY", "short-but-varied-key", "DJANGO_SECRET_KEY is too weak"),
        ("DJANGO_SECRET_KEY", "x" * 60, "DJANGO_SECRET_KEY is too weak"),
        ("DJANGO_SECRET_KEY", "django-insecure-" + "abcdefghij" * 5, "DJANGO_SECRET_KEY is too weak"),
        ("INGEST_ACK_TIMEOUT_SECONDS", "ten", "INGEST_ACK_TIMEOUT_SECONDS must be a number"),
        ("JWT_SIGNING_KEY", "a-short-signing-key-of-40-characters-xyz", "JWT_SIGNING_KEY is too weak"),
        ("AUTH_THROTTLE_WINDOW_SECONDS", "0", "AUTH_THROTTLE_WINDOW_SECONDS must be at least 1"),
        ("JWT_ACCESS_TOKEN_SECONDS", "3600", "JWT_ACCESS_TOKEN_SECONDS is no longer read"),
    ],
)
def test_production_refuses_debug_weak_keys_and_malformed_numbers(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    import importlib

    import analytics_platform.settings as settings_module

    monkeypatch.setenv("ANALYTICS_ENV", "production")
    for required, required_value in PRODUCTION_REQUIRED.items():
        monkeypatch.setenv(required, required_value)
    monkeypatch.setenv(name, value)
    try:
        with pytest.raises(ImproperlyConfigured, match=message):
            importlib.reload(settings_module)
    finally:
        monkeypatch.undo()
        importlib.reload(settings_module)


#: What ``manage.py check --deploy`` may still say under the production environment, each one
#: explained in the README ("Security", check --deploy): HSTS for subdomains and preloading bind
#: every host of the parent domain, a decision for its owner (DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS,
#: DJANGO_SECURE_HSTS_PRELOAD).
DEPLOY_CHECK_EXPLAINED = {"security.W005", "security.W021"}


def test_check_deploy_under_production_leaves_only_explained_warnings(tmp_path: Path) -> None:
    env = {**os.environ, **PRODUCTION_REQUIRED, "ANALYTICS_ENV": "production", "ANALYTICS_VAR_DIR": str(tmp_path)}
    env.pop("DJANGO_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = set(re.findall(r"\(([a-z_]+\.[EW]\d+)\)", result.stderr))
    assert found == DEPLOY_CHECK_EXPLAINED, result.stderr
    # Turned on by whoever owns the domain, they go away: the warnings are about these two only.
    env |= {"DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS": "true", "DJANGO_SECURE_HSTS_PRELOAD": "true"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
