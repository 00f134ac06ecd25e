"""``manage.py logs_search``: lines shipped by a real process, read back through the command.

The lines come from the module's emitter process (see test_shipping.py); the command runs in this
process with the settings pointing at osmem, through the private ``ELASTICSEARCH_LOGS_NODE_CLASS``
test setting (osmem refuses the client's ``compatible-with=8`` media type). The exit-code tests run
``manage.py`` for real: they fail before any request, so they need no test double.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from analytics_platform.devstack.processes import free_port
from analytics_platform.log_store import LogStoreConfig, log_records_search, log_store_client_create
from tests.logs.conftest import run_service_process, service_env
from tests.logs.osmem import Osmem, PlainJsonNode
from tests.logs.test_shipping import EmitterRun, emitter_run

pytestmark = [pytest.mark.elasticsearch]


@pytest.fixture(scope="module")
def shipped(osmem: Osmem, tmp_path_factory: pytest.TempPathFactory) -> EmitterRun:
    return emitter_run(tmp_path_factory.mktemp("emitter"), osmem.url, "--lines", "3")


@pytest.fixture
def search(settings, osmem: Osmem, shipped: EmitterRun):
    settings.ELASTICSEARCH_LOGS_URL = osmem.url
    settings.ELASTICSEARCH_LOGS_INDEX_PREFIX = shipped.index_prefix
    settings.ELASTICSEARCH_LOGS_NODE_CLASS = PlainJsonNode  # test double only, see tests/logs/osmem.py

    def run(*args: str) -> list[dict[str, Any]]:
        out = io.StringIO()
        call_command("logs_search", *args, stdout=out)
        return [json.loads(line) for line in out.getvalue().splitlines()]

    return run


def test_request_id_prints_the_request_lines_newest_first(search, shipped: EmitterRun) -> None:
    printed = search("--request-id", shipped.request_id)
    newest_first = sorted(shipped.lines, key=lambda line: line["timestamp"], reverse=True)
    assert [line["event"] for line in printed] == [line["event"] for line in newest_first]
    assert len(printed) == 6
    for line, stdout_line in zip(printed, newest_first, strict=True):
        assert {key: line[key] for key in stdout_line} == stdout_line


def test_filters_level_trace_and_limit(search, shipped: EmitterRun) -> None:
    rid = shipped.request_id
    assert [line["event"] for line in search("--request-id", rid, "--level", "WARNING")] == [
        "request_failed",
        "stdlib line formatted",
    ]
    assert [line["event"] for line in search("--request-id", rid, "--level", "error")] == ["request_failed"]
    trace_id = next(line["trace_id"] for line in shipped.lines if "trace_id" in line)
    assert {line["event"] for line in search("--trace-id", trace_id)} == {"request_failed", "stdlib line formatted"}
    newest = max(shipped.lines, key=lambda line: line["timestamp"])
    assert [line["event"] for line in search("--request-id", rid, "--limit", "1")] == [newest["event"]]
    assert search("--request-id", "no-such-request") == []
    with pytest.raises(CommandError, match="--since"):
        search("--since", "yesterday")


def test_exit_status_2_when_elasticsearch_is_not_configured_or_unreachable(tmp_path: Path) -> None:
    unset = run_service_process(["manage.py", "logs_search", "--request-id", "x"], service_env(tmp_path))
    assert unset.returncode == 2, unset.stderr
    assert "Elasticsearch is not configured: set ELASTICSEARCH_LOGS_URL" in unset.stderr
    url = f"http://user:secret@127.0.0.1:{free_port()}"
    down = run_service_process(
        ["manage.py", "logs_search", "--request-id", "x"], service_env(tmp_path, ELASTICSEARCH_LOGS_URL=url)
    )
    assert down.returncode == 2, down.stderr
    assert "is unreachable" in down.stderr
    assert "secret" not in down.stderr  # the URL is shown without its credentials


def test_since_bounds_the_time_range(osmem: Osmem, shipped: EmitterRun) -> None:
    config = LogStoreConfig(url=osmem.url, index_prefix=shipped.index_prefix, node_class=PlainJsonNode)
    client = log_store_client_create(config)
    now = dt.datetime.now(dt.UTC)

    def found(since: dt.timedelta, at: dt.datetime) -> int:
        records = log_records_search(
            client=client, index_prefix=shipped.index_prefix, request_id=shipped.request_id, since=since, now=at
        )
        return len(records)

    assert found(dt.timedelta(hours=1), now) == 6
    assert found(dt.timedelta(hours=1), now + dt.timedelta(hours=2)) == 0
    assert found(dt.timedelta(days=1), now + dt.timedelta(hours=2)) == 6
