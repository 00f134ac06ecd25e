"""Real services for the test run, started once per session and stopped at the end.

* the Tansu Kafka broker on a free port (``kafka_broker``);
* the embedded ClickHouse server on a free port with a temporary data dir and a generated
  password (``clickhouse_server``);
  every test that uses the Django test databases gets it, because the ``clickhouse`` alias is one
  of them;
* the embedded schema registry on a free port with a temporary data dir (``schema_registry``);
* PostgreSQL and Redis are the machine's own (``make test`` points DATABASE_URL at PostgreSQL).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from analytics_platform import kafka
from analytics_platform.clickhouse_server.testing import ServerProcess
from analytics_platform.devstack import processes
from analytics_platform.schema_registry.testing import RegistryProcess, start_registry_process


@pytest.fixture(scope="session", autouse=True)
def _static_files_from_finders() -> Iterator[None]:
    """In-process tests render pages without a ``collectstatic`` run first.

    The production storage names each file by its hash, read from the manifest that
    ``collectstatic`` writes (20-40 s here); templates rendered in process use Django's plain
    storage instead, and the finders serve the files. The collected pipeline itself (hashed names,
    gzip and brotli, WhiteNoise under gunicorn) is tested through a real process in
    tests/test_static_files.py, which uses ``collected_static``.
    """
    storages = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(STORAGES=storages):
        yield


@pytest.fixture(autouse=True)
def _login_throttle_reset() -> None:
    """Each test starts with the login budgets full: the suite logs in from 127.0.0.1 many times."""
    from django.core.cache import caches

    caches["auth_throttle"].clear()


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``collectstatic`` per test run with the production storage, for processes started by tests.

    Pass it as DJANGO_STATIC_ROOT: the devstack's fingerprint then finds it current and skips it.
    """
    root = tmp_path_factory.mktemp("static")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
        "DJANGO_STATIC_ROOT": str(root),
        "ANALYTICS_VAR_DIR": str(tmp_path_factory.mktemp("static-var")),
        "PYTHONPATH": str(settings.BASE_DIR),
    }
    env.pop("DATABASE_URL", None)
    code = "import django; django.setup(); from analytics_platform.services import static_files_collect as c; c()"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, check=True, timeout=300)
    return root


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[processes.ManagedProcess]:
    broker = processes.broker_start()
    previous = settings.KAFKA_BOOTSTRAP_SERVERS
    settings.KAFKA_BOOTSTRAP_SERVERS = broker.address
    kafka.topics_ensure()
    yield broker
    settings.KAFKA_BOOTSTRAP_SERVERS = previous
    broker.stop()


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = processes.clickhouse_start(data_dir=Path(tmp_path_factory.mktemp("clickhouse")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """The session's registry; settings (hence every client made from them) point at it."""
    from analytics_platform import health

    registry = start_registry_process(data_dir=Path(tmp_path_factory.mktemp("schema-registry")))
    previous = settings.SCHEMA_REGISTRY_URL, settings.SCHEMA_REGISTRY_CLIENT
    settings.SCHEMA_REGISTRY_URL = registry.url
    settings.SCHEMA_REGISTRY_CLIENT = registry.client_config()
    health._registry = None
    yield registry
    settings.SCHEMA_REGISTRY_URL, settings.SCHEMA_REGISTRY_CLIENT = previous
    health._registry = None
    registry.stop()


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
    clickhouse_server: ServerProcess,
) -> None:
    # Connections share these dicts, so updating them in place before the test databases are
    # created points every connection at the session's server.
    clickhouse = settings.DATABASES["clickhouse"]
    clickhouse["HOST"] = clickhouse_server.host
    clickhouse["PORT"] = clickhouse_server.port
    # The server requires a password (generated per run): every client made from these settings,
    # and every process a test starts with CLICKHOUSE_PASSWORD from them, goes through the check.
    clickhouse["PASSWORD"] = clickhouse_server.password


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis (production's Celery broker and cache); fails clearly when it is down."""
    import redis

    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not running on 127.0.0.1:6379 ({exc}); .ci/run starts it")
    return url
