"""GET /metrics and the dashboards under hostile and unusual input, on the real ClickHouse server.

Whatever the query string holds, the answer is a 200 or a 400 whose ``error.field`` names a
parameter, never a 5xx; a query beyond the ClickHouse time or memory limit is a 422 in about the
limit's time, and the limit does not outlive the query on its connection.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.test import Client, override_settings
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from metrics import query
from metrics.apis import PARAMETERS
from tests.metrics import data as gen
from tests.metrics.conftest import dataset_base

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

BASE = dataset_base()
BUILTINS = sorted(gen.TRUTH)


def _error(response: Any, status: int, field: str | None) -> dict:
    assert response.status_code == status, response.content
    error: dict = response.json()["error"]
    assert error.get("field") == field and error["message"], error
    return error


# --- The reported cases ------------------------------------------------------------------------


def test_to_in_year_one_is_a_400_naming_to(api: APIClient, loaded: gen.Dataset) -> None:
    """It was a 500: the default 'from' (to - 24 h) overflowed Python's datetime."""
    response = api.get("/metrics", {"metric": "events", "to": "0001-01-01T00:00:00Z"})
    error = _error(response, 400, "to")
    assert "1970-01-01T00:00:00Z" in error["message"] and "2200-01-01T00:00:00Z" in error["message"]
    response = api.get("/metrics", {"metric": "events", "from": "2026-01-01T00:00:00Z", "to": "0001-01-01T00:00:00Z"})
    _error(response, 400, "to")


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        # Centuries grouped by videoId: it ran to completion over everything, unbounded.
        ({"from": "1970-01-01T00:00:00Z", "to": "2199-12-31T00:00:00Z", "groupBy": "videoId"}, "groupBy", "400 days"),
        ({"from": "1970-01-01T00:00:00Z", "to": "2199-12-31T00:00:00Z", "interval": "minute"}, "interval", "10,080"),
        ({"from": "1970-01-01T00:00:00Z", "to": "2199-12-31T00:00:00Z", "interval": "hour"}, "interval", "8,784"),
        (
            {"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "interval": "day", "groupBy": "country"},
            "limit",
            "100,000",
        ),
    ],
)
def test_ranges_too_large_for_the_question_name_the_parameter_and_maximum(
    api: APIClient, params: dict, field: str, says: str
) -> None:
    error = _error(api.get("/metrics", {"metric": "events", **params}), 400, field)
    assert says in error["message"], error


def test_the_whole_stored_range_per_day_is_answered(api: APIClient, loaded: gen.Dataset) -> None:
    response = api.get(
        "/metrics",
        {"metric": "events", "from": "1970-01-01T00:00:00Z", "to": "2200-01-01T00:00:00Z", "interval": "day"},
    )
    assert response.status_code == 200, response.content
    series = response.json()["metrics"][0]["series"][0]
    assert len(series["points"]) == 84_006 and series["total"] == len(loaded.events)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"to": "2026-01-01"}, "to"),
        ({"from": "1969-12-31T23:59:59Z"}, "from"),
        ({"from": "9999-12-31T23:59:59-23:59", "to": "9999-12-31T23:59:59-23:59"}, "from"),
        ({"to": "2200-01-01T00:00:00.001Z"}, "to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "2026-12-31T23:59:60Z"}, "from"),
        ({"to": "2026-02-29T00:00:00Z"}, "to"),
        ({"limit": "99999999999999999999999"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"limit": "-1"}, "limit"),
    ],
)
def test_bad_dates_and_limits_are_400(api: APIClient, params: dict, field: str) -> None:
    _error(api.get("/metrics", {"metric": "events", **params}), 400, field)


def test_unknown_parameters_are_ignored_and_dates_without_offset_are_utc(api: APIClient) -> None:
    """Compatibility: cache-busters and parameters of newer clients are ignored; no offset means UTC."""
    base = {"metric": "events", "to": "2026-01-02T00:00:00Z", "interval": "hour"}
    plain = api.get("/metrics", {**base, "from": "2026-01-01T00:00:00Z"})
    assert plain.status_code == 200, plain.content
    extra = api.get("/metrics", {**base, "from": "2026-01-01T00:00:00", "_": "1733", "format": "json"})
    assert extra.status_code == 200, extra.content
    assert extra.json() == plain.json()


@pytest.mark.parametrize("name", ["from", "to", "interval", "limit"])
def test_repeated_single_valued_parameters_are_400(api: APIClient, name: str) -> None:
    values = {
        "from": ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"],
        "to": ["2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z"],
        "interval": ["hour", "day"],
        "limit": ["1", "2"],
    }
    _error(api.get("/metrics", {"metric": "events", name: values[name]}), 400, name)


def test_offsets_are_converted_to_utc(api: APIClient, loaded: gen.Dataset) -> None:
    """A total's one point is labelled with the range's start in UTC (it was the local clock + Z)."""
    start = BASE.astimezone(timezone(timedelta(hours=2)))  # reads BASE + 2 h on its own clock
    body = api.get(
        "/metrics", {"metric": "events", "from": start.isoformat(), "to": (BASE + timedelta(days=3)).isoformat()}
    ).json()
    assert body["from"] == BASE.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["metrics"][0]["series"][0]["points"][0]["t"] == body["from"]
    assert body["metrics"][0]["series"][0]["total"] == len(loaded.events)


# --- ClickHouse limits -------------------------------------------------------------------------

# About a minute of CPU on this machine without a limit (sipHash of 20 billion numbers).
SLOW_SQL = "SELECT toUInt64(0), toUInt8(1), count() FROM numbers(20000000000) WHERE modulo(sipHash64(number), 7) = 1"


def test_time_limit_stops_a_slow_query_with_a_422(
    api: APIClient, loaded: gen.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    def slow(metrics: list[query.CompiledMetric], request: query.MetricRequest) -> list[query.BuiltQuery]:
        return [
            query.BuiltQuery(
                sql=SLOW_SQL, params={}, table="numbers", from_rollup=False, group_by=(), has_interval=False
            )
        ]

    monkeypatch.setattr(query, "queries_build", slow)
    with override_settings(METRICS_QUERY_MAX_EXECUTION_SECONDS=1, METRICS_QUERY_CACHE_SECONDS=0):
        started = time.monotonic()
        response = api.get("/metrics", {"metric": "events"})
        elapsed = time.monotonic() - started
    error = _error(response, 422, None)
    assert error["code"] == "query_too_expensive" and "time limit" in error["message"]
    assert elapsed < 10, elapsed  # stopped by the server at ~1 s, not by the 11 s socket timeout
    monkeypatch.undo()
    # The limit was the query's: the next query on the same connection runs unlimited again.
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        assert api.get("/metrics", {"metric": "events"}).status_code == 200


def test_memory_limit_stops_a_real_metric_query_with_a_422(api: APIClient, loaded: gen.Dataset) -> None:
    params = {"metric": ["unique_viewers", "events"], "from": BASE.isoformat(), "groupBy": "country"}
    with override_settings(METRICS_QUERY_MAX_MEMORY_BYTES=100_000, METRICS_QUERY_CACHE_SECONDS=0):
        error = _error(api.get("/metrics", params), 422, None)
    assert error["code"] == "query_too_expensive" and "memory limit" in error["message"]
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        assert api.get("/metrics", params).status_code == 200


def test_unreachable_clickhouse_is_a_503_with_retry_after(api: APIClient, loaded: gen.Dataset) -> None:
    from django.db import connections

    db = connections["clickhouse"].settings_dict
    port = db["PORT"]
    db["PORT"] = 1  # nothing listens there
    try:
        with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
            response = api.get("/metrics", {"metric": "events"})
    finally:
        db["PORT"] = port
    error = _error(response, 503, None)
    assert error["code"] == "clickhouse_unavailable" and response["Retry-After"] == "5"


# --- Generated query strings -------------------------------------------------------------------

offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)).map(
    lambda d: timezone(timedelta(minutes=d // timedelta(minutes=1)))
)
any_moment = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999))
near_data = st.datetimes(
    min_value=(BASE - timedelta(days=10)).replace(tzinfo=None),
    max_value=(BASE + timedelta(days=10)).replace(tzinfo=None),
)
# The first and last days Python can represent: arithmetic on them (a default 'from' of 'to' - 24 h,
# a conversion to UTC) is where OverflowError lived.
edge_moment = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2)) | st.datetimes(
    min_value=datetime(9999, 12, 30), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
)
edge_dates = st.one_of(
    edge_moment.map(lambda d: d.isoformat() + "Z"),
    st.tuples(edge_moment, offsets).map(lambda p: p[0].replace(tzinfo=p[1]).isoformat()),
)
valid_dates = st.one_of(
    near_data.map(lambda d: d.isoformat() + "Z"),
    st.tuples(near_data, offsets).map(lambda p: p[0].replace(tzinfo=p[1]).isoformat()),
)
dates = st.one_of(
    valid_dates,
    valid_dates,  # drawn as often as all the rest, so that many examples reach ClickHouse
    edge_dates,
    any_moment.map(lambda d: d.isoformat() + "Z"),
    st.tuples(any_moment, offsets).map(lambda p: p[0].replace(tzinfo=p[1]).isoformat()),
    any_moment.map(lambda d: d.isoformat()),  # no offset
    any_moment.map(lambda d: d.strftime("%Y-%m-%d")),
    # Shaped like RFC 3339, any digits: month 13, day 31 of a short month, hour 24, second 60, offset 24:00.
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=40),
    st.sampled_from(
        ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "1970-01-01T00:00:00Z", "2200-01-01T00:00:00Z"]
    ),
)
words = st.text(max_size=12) | st.sampled_from(["", "\x00", "é", "🎬", "\ud7ff", "' OR 1=1 --", "%00"])
dimensions = st.sampled_from(query.DIMENSIONS)
# Mostly valid values, so that most examples reach ClickHouse; the rest are junk of every kind.
params = st.fixed_dictionaries(
    {"metric": st.lists(st.sampled_from(BUILTINS), min_size=1, max_size=3) | st.lists(words, max_size=2)},
    optional={
        "from": dates,
        "to": dates,
        "interval": st.sampled_from(["minute", "hour", "day"]) | st.sampled_from(["week", "", "MINUTE"]) | words,
        "groupBy": st.lists(dimensions, max_size=2) | st.lists(dimensions | words, max_size=4),
        "filter": st.lists(st.tuples(dimensions, words).map(":".join), max_size=3)
        | st.lists(st.tuples(dimensions | words, words).map(":".join) | words, max_size=3),
        "limit": st.integers(1, 200).map(str) | st.integers(-5, 10**40).map(str) | words,
        "extra": st.none() | st.none() | st.none() | st.tuples(words.filter(lambda w: w not in PARAMETERS), words),
    },
)

# Every parameter well formed except the dates, which range over everything: the questions that
# reach the range checks and ClickHouse.
well_formed = st.fixed_dictionaries(
    {"metric": st.lists(st.sampled_from(BUILTINS), min_size=1, max_size=3)},
    optional={
        "from": edge_dates | dates,
        "to": edge_dates | dates,
        "interval": st.sampled_from(["minute", "hour", "day"]),
        "groupBy": st.lists(dimensions, max_size=2),
        "filter": st.lists(st.tuples(dimensions, words).map(":".join), max_size=2),
        "limit": st.integers(1, 10_000).map(str),
    },
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(drawn=params | well_formed)
def test_generated_query_strings_never_5xx_and_400s_name_a_parameter(
    api: APIClient, loaded: gen.Dataset, drawn: dict[str, Any]
) -> None:
    drawn = dict(drawn)
    extra = drawn.pop("extra", None)
    if extra is not None:
        drawn[extra[0]] = extra[1]
    response = api.get("/metrics", drawn)
    field = response.json().get("error", {}).get("field")
    event(f"{response.status_code} {field if field in PARAMETERS else 'unknown parameter' if field else ''}")
    assert response.status_code in (200, 400), (drawn, response.status_code, response.content[:500])
    body = response.json()
    if response.status_code == 400:
        error = body["error"]
        assert error["message"] and error["field"] in {*PARAMETERS, *(k[:64] for k in drawn)}, (drawn, error)
    else:
        assert body["from"] < body["to"] and len(body["metrics"]) == len(drawn["metric"])


# --- Dashboards --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query_string",
    [
        "from=0001-01-01T00:00:00Z&to=9999-12-31T23:59:59Z",
        "from=2026-01-01T00:00:00Z&to=0001-01-01T00:00:00Z",
        "from=2026-13-01T00:00&to=2026-12-01T00:00",  # was a ValueError from Django's parse_datetime
        "from=yesterday&to=today",
        "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z&interval=minute",
        "interval=week",
    ],
)
@pytest.mark.parametrize("page", ["/dashboards/", "/dashboards/videos/video-0"])
def test_dashboards_answer_bad_ranges_with_a_400_page(
    staff_user: Any, loaded: gen.Dataset, page: str, query_string: str
) -> None:
    client = Client()
    client.force_login(staff_user)
    response = client.get(f"{page}?{query_string}")
    assert response.status_code == 400, response.content[:300]


def test_overview_over_centuries_is_a_400_page_naming_the_video_cap(staff_user: Any, loaded: gen.Dataset) -> None:
    """The overview's top-videos table groups by videoId: refused beyond its range cap."""
    client = Client()
    client.force_login(staff_user)
    response = client.get("/dashboards/", {"from": "1970-01-01T00:00:00Z", "to": "2199-01-01T00:00:00Z"})
    assert response.status_code == 400 and "400 days" in response.content.decode()


def test_dashboard_custom_range_without_offset_is_utc(staff_user: Any, loaded: gen.Dataset) -> None:
    client = Client()
    client.force_login(staff_user)
    start = BASE.replace(tzinfo=None)
    response = client.get("/dashboards/", {"from": start.isoformat(), "to": (start + timedelta(days=1)).isoformat()})
    assert response.status_code == 200
    assert BASE.astimezone(UTC).strftime("%Y-%m-%d %H:%M") in response.content.decode()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(start=dates, end=dates, interval=st.sampled_from(["", "minute", "hour", "day"]) | words)
def test_generated_dashboard_ranges_never_5xx(
    staff_user: Any, loaded: gen.Dataset, start: str, end: str, interval: str
) -> None:
    client = Client()
    client.force_login(staff_user)
    response = client.get("/dashboards/", {"from": start, "to": end, "interval": interval})
    assert response.status_code in (200, 400), (start, end, interval, response.content[:300])
