"""The log store for the log shipping tests: osmem-server started once per session on a free port.

osmem (in-memory, OpenSearch-compatible) stands in for Elasticsearch; see tests/logs/osmem.py for
the one thing it needs from the client (plain JSON media types). Each test writes under an index
prefix of its own, so tests never see each other's lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analytics_platform.log_store import LogStoreConfig
from tests.logs.osmem import Osmem, PlainJsonNode, osmem_start

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def osmem() -> Iterator[Osmem]:
    server = osmem_start()
    yield server
    server.stop()


def new_index_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}-logs"


@pytest.fixture
def index_prefix() -> str:
    return new_index_prefix()


@pytest.fixture
def log_store(settings, osmem: Osmem, index_prefix: str) -> LogStoreConfig:
    """Django settings pointing at the session's osmem (for ``logs_search``), and the same as a config."""
    settings.ELASTICSEARCH_LOGS_URL = osmem.url
    settings.ELASTICSEARCH_LOGS_INDEX_PREFIX = index_prefix
    settings.ELASTICSEARCH_LOGS_NODE_CLASS = PlainJsonNode  # test double only, see tests/logs/osmem.py
    return LogStoreConfig(url=osmem.url, index_prefix=index_prefix, node_class=PlainJsonNode)


def service_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a service process started by a test: the local configuration plus ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ELASTICSEARCH_LOGS_")}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
            "ANALYTICS_VAR_DIR": str(tmp_path / "var"),
            "DJANGO_SECRET_KEY": "test-" + "x" * 40,
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def run_service_process(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def search_all(osmem: Osmem, index_prefix: str, **term: Any) -> list[dict[str, Any]]:
    """Every document of ``<prefix>-*`` (matching ``term``), with its index, straight from the store."""
    from elasticsearch_dsl import Search

    client = osmem.client()
    client.indices.refresh(index=f"{index_prefix}-*")
    search = Search(using=client, index=f"{index_prefix}-*").extra(size=1000)
    for field, value in term.items():
        search = search.filter("term", **{field: value})
    return [{"_index": hit.meta.index, **hit.to_dict()} for hit in search.execute().hits]
