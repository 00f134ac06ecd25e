"""The player-error document, its template, query building and retention (streams/error_search.py).

Mapping and query building on plain data; indexing, search and pruning against osmem (the
in-memory OpenSearch-compatible server, tests/logs/osmem.py).
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from typing import Any

import pytest

from analytics_platform.log_store import LogStoreConfig
from streams import dead_letters, error_search
from streams.error_indexer import IndexerStats, backoff_delay, bulk_index
from tests.logs.osmem import Osmem, PlainJsonNode
from tests.streams.errors_support import osmem  # noqa: F401

NOW = dt.datetime(2026, 12, 4, 0, 30, tzinfo=dt.UTC)


def _video_error(**overrides: Any) -> dict[str, Any]:
    event = {
        "id": str(uuid.uuid4()),
        "type": "VideoError",
        "eventId": str(uuid.uuid4()),
        "userId": "u1",
        "sessionId": "s1",
        "videoId": "video-1",
        "timestamp": NOW - dt.timedelta(hours=1),
        "errorCode": "E_MANIFEST",
        "errorMessage": "manifest request failed with 403",
        "positionMs": 1200,
        "device": "smart_tv",
        "os": "tizen",
        "browser": "",
        "country": "FR",
        "cdn": "cdn-a",
        "player": "p1",
    }
    event.update(overrides)
    return event


def _dead_letter(**overrides: Any) -> dict[str, Any]:
    record = dead_letters.dead_letter(
        dead_letters.INVALID_EVENT,
        "Expected `int`, got `str` - at `$.timestamp`",
        payload=b'{"timestamp": "yesterday"}',
        partition=3,
        offset=42,
        field="timestamp",
        event_id=str(uuid.uuid4()),
        user_id="u2",
    )
    record.update(overrides)
    return record


# --- mapping -------------------------------------------------------------------------------------


def test_the_template_maps_every_field_explicitly_and_nothing_dynamically():
    body = error_search.index_template("pe").to_dict()
    assert body["index_patterns"] == ["pe-*"]
    assert body["priority"] > 100  # above Elasticsearch's built-in templates
    mappings = body["template"]["mappings"]
    assert mappings["dynamic"] is False
    props = mappings["properties"]
    assert props["message"]["type"] == "text" and props["message"]["fields"]["keyword"]["type"] == "keyword"
    for name in ("kind", "code", "video_id", "country", "device", "event_id", "source"):
        assert props[name] == {"type": "keyword"}, name
    assert props["timestamp"] == {"type": "date"} and props["position_ms"] == {"type": "long"}


def test_a_video_error_becomes_a_document_in_the_day_of_its_event_time():
    event = _video_error(timestamp=dt.datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=dt.UTC))
    doc = error_search.video_error_document(event, prefix="pe", source="t/1/2")
    assert doc is not None
    assert doc.meta.id == event["id"] and doc.meta.index == "pe-2026.11.30"
    assert (doc.kind, doc.code, doc.message, doc.video_id) == (
        "video_error",
        "E_MANIFEST",
        event["errorMessage"],
        "video-1",
    )
    # epoch milliseconds (the JSON form) land on the same day as the decoded Avro datetime
    millis = error_search.video_error_document(
        {**event, "timestamp": int(event["timestamp"].timestamp() * 1000)}, prefix="pe", source="t/1/2"
    )
    assert millis is not None and millis.meta.index == "pe-2026.11.30"


@pytest.mark.parametrize(
    "overrides",
    [{"timestamp": None}, {"timestamp": "2026-11-30"}, {"timestamp": 10**20}, {"timestamp": True}, {"id": ""}],
)
def test_a_video_error_without_a_usable_time_or_id_is_not_a_document(overrides):
    assert error_search.video_error_document(_video_error(**overrides), prefix="pe", source="s") is None


def test_hostile_fields_are_bounded_and_typed():
    event = _video_error(errorMessage="x" * 100_000, videoId=["not", "a", "string"], positionMs="12", country="F" * 999)
    doc = error_search.video_error_document(event, prefix="pe", source="s")
    assert doc is not None
    assert len(doc.message) == error_search.MESSAGE_MAX_CHARS
    assert doc.video_id == "" and doc.position_ms is None
    assert len(doc.country) == error_search.FILTER_MAX_CHARS


def test_a_dead_letter_id_depends_on_where_it_came_from_not_on_when():
    record = _dead_letter()
    one = error_search.dead_letter_document(record, written_at=NOW, prefix="pe", source="dlq/0/1")
    again = error_search.dead_letter_document(dict(record), written_at=NOW, prefix="pe", source="dlq/0/7")
    other = error_search.dead_letter_document({**record, "offset": 43}, written_at=NOW, prefix="pe", source="dlq/0/2")
    assert one is not None and again is not None and other is not None
    assert one.meta.id == again.meta.id != other.meta.id
    assert (one.kind, one.code, one.field, one.stage) == ("dead_letter", "invalid_event", "timestamp", "decode")
    assert error_search.dead_letter_document({"type": "VideoError"}, written_at=NOW, prefix="pe", source="s") is None
    assert error_search.dead_letter_document(["a list"], written_at=NOW, prefix="pe", source="s") is None  # type: ignore[arg-type]


# --- query building ------------------------------------------------------------------------------


def test_the_query_is_a_match_on_the_message_with_term_filters_and_a_half_open_range():
    query = error_search.error_query_parse(
        {"q": " manifest 403 ", "code": "E_MANIFEST", "video": "video-1", "country": "FR", "device": "tv", "x": "1"},
        start=NOW - dt.timedelta(days=1),
        end=NOW,
    )
    body = error_search.error_search_build(query, prefix="pe").to_dict()
    assert body["query"]["bool"]["must"] == [{"match": {"message": {"query": "manifest 403", "operator": "and"}}}]
    filters = body["query"]["bool"]["filter"]
    assert {"term": {"code": "E_MANIFEST"}} in filters and {"term": {"video_id": "video-1"}} in filters
    assert {"term": {"country": "FR"}} in filters and {"term": {"device": "tv"}} in filters
    assert {"range": {"timestamp": {"gte": "2026-12-03T00:30:00+00:00", "lt": "2026-12-04T00:30:00+00:00"}}} in filters
    assert len(filters) == 5  # the unknown parameter is ignored
    assert body["sort"] == [{"timestamp": {"order": "desc"}}] and body["size"] == 100


def test_no_text_no_full_text_clause():
    body = error_search.error_search_build(
        error_search.error_query_parse({"q": "   "}, start=NOW - dt.timedelta(hours=1), end=NOW), prefix="pe"
    ).to_dict()
    assert "must" not in body["query"]["bool"]


@pytest.mark.parametrize(
    ("params", "limit"),
    [
        ({"q": "x" * 201}, 100),
        ({"code": "E" * 201}, 100),
        ({"kind": "everything"}, 100),
        ({}, 0),
        ({}, error_search.SEARCH_LIMIT_MAX + 1),
    ],
)
def test_oversized_or_unknown_input_is_refused(params, limit):
    with pytest.raises(error_search.ErrorQueryError):
        error_search.error_query_parse(params, start=NOW - dt.timedelta(hours=1), end=NOW, limit=limit)


def test_backoff_doubles_and_is_capped():
    assert [backoff_delay(n, base=1, cap=30) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


# --- against osmem -------------------------------------------------------------------------------


def _client(server: Osmem) -> Any:
    config = error_search.ErrorSearchConfig(
        store=LogStoreConfig(url=server.url, index_prefix="unused", node_class=PlainJsonNode)
    )
    return error_search.error_search_client_create(config)


@pytest.fixture
def indexed_store(osmem: Osmem) -> tuple[Any, str, list[Any]]:  # noqa: F811
    prefix = f"pe-{uuid.uuid4().hex[:10]}"
    client = _client(osmem)
    error_search.index_template_install(client=client, prefix=prefix)
    now = dt.datetime.now(dt.UTC)
    made = [
        error_search.video_error_document(
            _video_error(timestamp=now - dt.timedelta(minutes=5)), prefix=prefix, source="t/0/1"
        ),
        error_search.video_error_document(
            _video_error(
                timestamp=now - dt.timedelta(minutes=4),
                errorCode="E_DECODE",
                errorMessage="decoder error: unsupported codec hev1",
                country="DE",
                videoId="video-2",
            ),
            prefix=prefix,
            source="t/0/2",
        ),
        error_search.dead_letter_document(_dead_letter(), written_at=now, prefix=prefix, source="dlq/0/1"),
    ]
    docs = [doc for doc in made if doc is not None]
    assert len(docs) == 3
    stats = IndexerStats()
    assert bulk_index(client, docs, stats) == []
    assert bulk_index(client, docs, stats) == []  # a replay
    client.indices.refresh(index=f"{prefix}-*")
    return client, prefix, docs


def _search(client: Any, prefix: str, **params: str) -> error_search.ErrorHits:
    now = dt.datetime.now(dt.UTC)
    query = error_search.error_query_parse(params, start=now - dt.timedelta(hours=1), end=now + dt.timedelta(minutes=1))
    return error_search.player_errors_search(client=client, prefix=prefix, query=query)


@pytest.mark.elasticsearch
def test_a_replayed_bulk_overwrites_instead_of_duplicating(indexed_store):
    client, prefix, _docs = indexed_store
    assert client.count(index=f"{prefix}-*")["count"] == 3
    mapping = client.indices.get_mapping(index=f"{prefix}-*")
    assert all(m["mappings"]["properties"]["code"]["type"] == "keyword" for m in mapping.values())


@pytest.mark.elasticsearch
def test_search_by_words_and_filters(indexed_store):
    client, prefix, _docs = indexed_store
    assert [h["code"] for h in _search(client, prefix, q="unsupported codec").hits] == ["E_DECODE"]
    assert _search(client, prefix, q="unsupported manifest").total == 0  # every word must match
    assert [h["video_id"] for h in _search(client, prefix, country="FR", kind="video_error").hits] == ["video-1"]
    assert [h["code"] for h in _search(client, prefix, kind="dead_letter").hits] == ["invalid_event"]
    assert _search(client, prefix).total == 3
    # Query-string syntax is plain words here, not operators or wildcards.
    assert _search(client, prefix, q="* OR manifest").total == 0
    assert _search(client, prefix, code="E_*").total == 0


@pytest.mark.elasticsearch
def test_a_search_of_a_prefix_without_indices_finds_nothing(osmem):  # noqa: F811
    assert _search(_client(osmem), f"pe-none-{uuid.uuid4().hex[:6]}", q="x").total == 0


@pytest.mark.elasticsearch
def test_pruning_deletes_whole_days_older_than_the_retention_only(osmem):  # noqa: F811
    client = _client(osmem)
    prefix = f"pe-{uuid.uuid4().hex[:10]}"
    for name in (f"{prefix}-2026.11.03", f"{prefix}-2026.11.04", f"{prefix}-2026.12.04", f"{prefix}-keep-me"):
        client.indices.create(index=name)
    other = f"{prefix}x-2026.01.01"  # another prefix that starts the same
    client.indices.create(index=other)
    deleted = error_search.player_error_indices_prune(client=client, prefix=prefix, retention_days=30, now=NOW)
    assert deleted == [f"{prefix}-2026.11.03"]
    left = set(client.indices.get(index=f"{prefix}*").keys())
    assert left == {f"{prefix}-2026.11.04", f"{prefix}-2026.12.04", f"{prefix}-keep-me", other}


# --- wiring --------------------------------------------------------------------------------------


def test_the_devstack_runs_the_indexer_only_when_a_search_url_is_configured(settings):
    from analytics_platform.devstack import stack

    settings.ELASTICSEARCH_ERRORS_URL = ""
    assert "errors-indexer" not in {spec.name for spec in stack.application_processes(port=8000)}
    settings.ELASTICSEARCH_ERRORS_URL = "http://127.0.0.1:9200"
    specs = {spec.name: spec for spec in stack.application_processes(port=8000)}
    assert specs["errors-indexer"].argv[-1] == "index_errors" and specs["errors-indexer"].restart


def test_search_off_is_a_message_not_an_error(settings):
    settings.ELASTICSEARCH_ERRORS_URL = ""
    query = error_search.error_query_parse({}, start=NOW - dt.timedelta(hours=1), end=NOW)
    hits, why = error_search.player_errors_find(query=query)
    assert hits is None and "ELASTICSEARCH_ERRORS_URL" in why


@pytest.mark.elasticsearch
def test_the_beat_task_and_the_command_prune_with_the_configured_store(settings, osmem):  # noqa: F811
    from django.core.management import call_command

    from streams.tasks import player_error_indices_prune_task

    prefix = f"pe-{uuid.uuid4().hex[:10]}"
    settings.ELASTICSEARCH_ERRORS_URL = osmem.url
    settings.ELASTICSEARCH_ERRORS_INDEX_PREFIX = prefix
    settings.ELASTICSEARCH_ERRORS_NODE_CLASS = PlainJsonNode
    settings.ELASTICSEARCH_ERRORS_RETENTION_DAYS = 7
    client = _client(osmem)
    today = dt.datetime.now(dt.UTC)
    old = error_search.index_name(prefix, today - dt.timedelta(days=9))
    older = error_search.index_name(prefix, today - dt.timedelta(days=30))
    kept = error_search.index_name(prefix, today - dt.timedelta(days=7))
    for name in (old, older, kept):
        client.indices.create(index=name)
    assert player_error_indices_prune_task() == sorted([older, old])
    client.indices.create(index=older)
    out = io.StringIO()
    call_command("errors_prune", stdout=out)
    assert out.getvalue().split() == ["deleted", older]
    assert set(client.indices.get(index=f"{prefix}-*")) == {kept}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ELASTICSEARCH_ERRORS_URL": "http://es:9200"}, "scheduled"),
        ({}, "off"),
        ({"ELASTICSEARCH_ERRORS_URL": "es:9200"}, "http:// or https://"),
        ({"ELASTICSEARCH_ERRORS_URL": "http://es:9200", "ELASTICSEARCH_ERRORS_INDEX_PREFIX": "Bad*"}, "lowercase"),
        ({"ELASTICSEARCH_ERRORS_URL": "http://es:9200", "ELASTICSEARCH_ERRORS_USERNAME": "u"}, "go together"),
    ],
)
def test_settings_schedule_the_retention_with_a_url_and_refuse_bad_values(env, expected, tmp_path):
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'analytics_platform.settings')\n"
        "from django.conf import settings\n"
        "print('scheduled' if 'streams-player-error-indices-prune' in settings.CELERY_BEAT_SCHEDULE else 'off')\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("ELASTICSEARCH_ERRORS_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**base, "PYTHONPATH": str(django_settings.BASE_DIR), "ANALYTICS_VAR_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert expected in result.stdout + result.stderr


@pytest.mark.django_db
def test_the_errors_page_needs_a_staff_login(client, django_user_model):
    response = client.get("/dashboards/errors?q=manifest")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    django_user_model.objects.create_user(username="viewer", password="not-staff-pass-123", is_staff=False)
    client.login(username="viewer", password="not-staff-pass-123")
    response = client.get("/dashboards/errors?q=manifest")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client.post("/dashboards/errors").status_code in (302, 405)
