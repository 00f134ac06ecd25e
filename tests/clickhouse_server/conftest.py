"""Fixtures for the embedded ClickHouse server tests: one real server process per test session.

The server is started through the same helper the dev stack uses, on a free port and a temporary
data directory; tests talk to it over TCP with clickhouse-driver, nothing is mocked.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clickhouse_driver import Client

from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process

# Runs in a subprocess with its own Django settings (see test_django.py).
collect_ignore = ["django_part"]


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in the project's pyproject.toml; repeated so this folder runs on its own.
    config.addinivalue_line("markers", "clickhouse: needs the embedded ClickHouse server (started by the test)")
    config.addinivalue_line("markers", "slow: takes more than ~30 s")


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("clickhouse")
    server = start_server_process(data_dir=base / "data", log_file=base / "server.log")
    yield server
    assert server.stop() == 0, (base / "server.log").read_text()[-4000:]


ClientFactory = Callable[..., Client]


@pytest.fixture()
def make_client(clickhouse_server: ServerProcess) -> Iterator[ClientFactory]:
    clients: list[Client] = []

    def make(**kwargs: Any) -> Client:
        client = Client(**clickhouse_server.client_kwargs(), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()


@pytest.fixture()
def client(make_client: ClientFactory) -> Client:
    return make_client()


@pytest.fixture()
def table_name(client: Client) -> Iterator[str]:
    """A unique table name, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    client.execute(f"DROP TABLE IF EXISTS {name}")
