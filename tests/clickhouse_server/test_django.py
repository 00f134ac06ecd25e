"""django-clickhouse-backend against the embedded server, in subprocesses with their own settings.

The project's pytest configuration points at the project's Django settings; these checks need
``tests/clickhouse_server/django_settings.py`` instead, so they run as child processes: Django's
``migrate``/``showmigrations`` commands, and pytest-django on ``django_part/`` with its own
``pytest.ini`` (which also keeps the project's root conftest out).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from clickhouse_driver import Client

from analytics_platform.clickhouse_server.testing import ServerProcess

pytestmark = pytest.mark.clickhouse

REPO = Path(__file__).resolve().parents[2]
DJANGO_PART = Path(__file__).resolve().parent / "django_part"
SETTINGS = "tests.clickhouse_server.django_settings"


def _env(server: ServerProcess, database: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        CH_TEST_PORT=str(server.port),
        CH_TEST_DB=database,
        CH_TEST_PASSWORD=server.password or "",
        DJANGO_SETTINGS_MODULE=SETTINGS,
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",  # only the plugins named below
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_migrate_creates_the_tables(clickhouse_server: ServerProcess, client: Client) -> None:
    database = f"chapp_{uuid.uuid4().hex[:8]}"
    client.execute(f"CREATE DATABASE {database}")
    env = _env(clickhouse_server, database)
    try:
        migrate = _run(["-m", "django", "migrate", "--database", "clickhouse", "--settings", SETTINGS], env)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        assert "Applying chapp.0001_initial... OK" in migrate.stdout

        shown = _run(["-m", "django", "showmigrations", "chapp", "--database", "clickhouse"], env)
        assert "[X] 0001_initial" in shown.stdout, shown.stdout + shown.stderr
        tables = {row[0] for row in client.execute(f"SHOW TABLES FROM {database}")}
        assert {"django_migrations", "chapp_videoview"} <= tables
        columns = dict(row[:2] for row in client.execute(f"DESCRIBE TABLE {database}.chapp_videoview"))
        assert columns["country"] == "LowCardinality(String)"
        assert columns["started_at"].startswith("DateTime64(6")
    finally:
        client.execute(f"DROP DATABASE IF EXISTS {database}")


def test_pytest_django_suite(clickhouse_server: ServerProcess, client: Client) -> None:
    database = f"chapp_{uuid.uuid4().hex[:8]}"
    env = _env(clickhouse_server, database)

    result = _run(
        ["-m", "pytest", "-p", "pytest_django.plugin", "--ds", SETTINGS, "-c", "pytest.ini", "-q", "."],
        env,
        cwd=DJANGO_PART,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4 passed" in output, output
    databases = {row[0] for row in client.execute("SHOW DATABASES")}
    assert f"test_{database}" not in databases  # pytest-django dropped its test database
