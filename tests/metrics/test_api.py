"""GET /metrics on the embedded ClickHouse server against generated data with known truth."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from metrics import query
from metrics.apis import MetricsQueryApi
from metrics.models import MetricDefinition
from tests.metrics import data as gen
from tests.metrics.conftest import PASSWORD, dataset_base

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

BUILTINS = sorted(gen.TRUTH)
METRICS_PER_REQUEST = 12


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_series_equal(got: list[dict], want: list[dict]) -> None:
    assert [s["group"] for s in got] == [s["group"] for s in want]
    for g, w in zip(got, want, strict=True):
        assert _close(g["total"], w["total"]), (g["group"], g["total"], w["total"])
        assert [p["t"] for p in g["points"]] == [p["t"] for p in w["points"]]
        for gp, wp in zip(g["points"], w["points"], strict=True):
            assert _close(gp["value"], wp["value"]), (g["group"], gp, wp)


def assert_documented_shape(body: dict) -> None:
    """The answer is what the OpenAPI schema says: OutputSerializer, which documents it, accepts it,
    and every level has exactly the serializer's keys (a serializer alone ignores extra ones)."""
    output = MetricsQueryApi.OutputSerializer(data=body)
    assert output.is_valid(), output.errors
    fields = output.fields
    assert set(body) == set(fields)
    metric_fields = fields["metrics"].child.fields  # type: ignore[attr-defined]  # a ListSerializer
    series_fields = metric_fields["series"].child.fields
    point_fields = series_fields["points"].child.fields
    for metric in body["metrics"]:
        assert set(metric) == set(metric_fields)
        for series in metric["series"]:
            assert set(series) == set(series_fields)
            assert all(set(point) == set(point_fields) for point in series["points"])


def _query(api: APIClient, **params: Any) -> dict:
    response = api.get("/metrics", params)
    assert response.status_code == 200, response.content
    body: dict = response.json()
    return body


BASE = dataset_base()
# (name, from, to, interval, groupBy, filters, limit): ranges that cut buckets and aligned ones.
CASES = [
    (
        "unaligned-hourly",
        BASE + timedelta(hours=1, minutes=30, seconds=13),
        BASE + timedelta(days=1, hours=5, minutes=10),
        "hour",
        [],
        [],
        100,
    ),
    ("aligned-hourly-rollup", BASE, BASE + timedelta(days=2), "hour", [], [], 100),
    (
        "daily-by-country-filtered",
        BASE + timedelta(hours=7),
        BASE + timedelta(days=3),
        "day",
        ["country"],
        [("device", "mobile")],
        100,
    ),
    (
        "minute-one-video",
        BASE + timedelta(hours=20, seconds=30),
        BASE + timedelta(hours=23, minutes=1),
        "minute",
        [],
        [("videoId", "video-0")],
        100,
    ),
    ("total-top3-videos", BASE, BASE + timedelta(days=3), None, ["videoId"], [], 3),
    (
        "hourly-by-country-device-or",
        BASE + timedelta(days=1),
        BASE + timedelta(days=1, hours=12),
        "hour",
        ["country", "device"],
        [("cdn", "cdn-a"), ("os", "ios"), ("os", "linux")],
        100,
    ),
    # One dimension (event metrics from the pivot rollup, streams 0010), aligned and not.
    ("daily-by-os", BASE, BASE + timedelta(days=3), "day", ["os"], [], 100),
    ("hourly-by-video-top5", BASE + timedelta(hours=2), BASE + timedelta(days=1, hours=2), "hour", ["videoId"], [], 5),
    (
        "unaligned-hourly-two-countries-by-country",
        BASE + timedelta(hours=3, minutes=20),
        BASE + timedelta(days=1, hours=1, seconds=9),
        "hour",
        ["country"],
        [("country", "DE"), ("country", "US")],
        100,
    ),
    # Top groups of a low-cardinality dimension chosen in the series' one scan (query.sql._top_groups).
    (
        "unaligned-hourly-top2-countries",
        BASE + timedelta(hours=2, minutes=10),
        BASE + timedelta(days=1, hours=4),
        "hour",
        ["country"],
        [],
        2,
    ),
    ("daily-top1-device", BASE, BASE + timedelta(days=3), "day", ["device"], [("country", "US")], 1),
    # Ranges not aligned on the coarse rollup: whole days/hours from it, the edges from a finer one.
    (
        "split-days-and-hours-by-video",
        BASE + timedelta(hours=5),
        BASE + timedelta(days=2, hours=3),
        "day",
        ["videoId"],
        [],
        4,
    ),
    (
        "split-hours-and-minutes",
        BASE + timedelta(hours=5, minutes=7),
        BASE + timedelta(days=1, hours=2, minutes=3),
        "hour",
        [],
        [],
        100,
    ),
    ("empty-range", BASE - timedelta(days=1), BASE - timedelta(hours=20), "hour", [], [], 100),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_builtin_metrics_equal_truth(api: APIClient, loaded: gen.Dataset, case: tuple) -> None:
    _, start, end, interval, group_by, filters, limit = case
    params: dict[str, Any] = {"from": _iso(start), "to": _iso(end), "limit": limit}
    if interval:
        params["interval"] = interval
    if group_by:
        params["groupBy"] = group_by
    if filters:
        params["filter"] = [f"{d}:{v}" for d, v in filters]
    answered = []
    for first in range(0, len(BUILTINS), METRICS_PER_REQUEST):  # GET /metrics takes at most 20 metrics
        chunk = BUILTINS[first : first + METRICS_PER_REQUEST]
        body = _query(api, metric=chunk, **params)
        assert_documented_shape(body)
        assert body["from"] == _iso(start) and body["to"] == _iso(end) and body["interval"] == interval
        assert [m["metric"] for m in body["metrics"]] == chunk
        answered += body["metrics"]
    for metric in answered:
        kind, aggregate, zero = gen.TRUTH[metric["metric"]]
        want = gen.expected(
            loaded,
            rows_kind=kind,
            aggregate=aggregate,
            zero=zero,
            start=start,
            end=end,
            interval=interval,
            group_by=group_by,
            filters=filters,
            limit=limit,
        )
        try:
            assert_series_equal(metric["series"], want)
        except AssertionError as exc:
            raise AssertionError(f"{metric['metric']}: {exc}") from exc


@pytest.mark.parametrize(
    ("group_by", "interval"), [("videoId", "hour"), ("country", "hour"), ("videoId", None)], ids=str
)
def test_fused_metrics_keep_each_their_own_top_groups(
    api: APIClient, loaded: gen.Dataset, group_by: str, interval: str | None
) -> None:
    """Metrics of one question read in one query (``query.queries_build``) answer as each asked
    alone, each with its own top groups, which differ between them here."""
    cache.clear()
    metrics = ["views", "watch_time_ms", "video_start_failure_rate", "rebuffer_ratio", "video_startup_time_ms_p95"]
    params: dict[str, Any] = {
        "from": _iso(BASE + timedelta(hours=2, minutes=10)),
        "to": _iso(BASE + timedelta(days=2, hours=4)),
        "groupBy": group_by,
        "limit": 2,
    }
    if interval:
        params["interval"] = interval
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        together = _query(api, metric=metrics, **params)["metrics"]
        alone = [_query(api, metric=[name], **params)["metrics"][0] for name in metrics]
    assert together == alone
    tops = {tuple(s["group"][group_by] for s in m["series"]) for m in together}
    assert len(tops) > 1, tops  # the members' top groups differ: each kept its own


def test_top_groups_over_their_guard_are_answered_by_the_narrowing_plan(
    api: APIClient, loaded: gen.Dataset, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A breakdown whose (group, bucket) rows exceed the one-scan plan's guard (a sender inventing
    countries) is stopped by ClickHouse and answered by the two-scan plan: the same answer, not a 422."""
    from metrics.query import sql

    cache.clear()
    params = {
        "metric": ["views", "events", "unique_viewers"],
        "from": _iso(BASE + timedelta(hours=1)),
        "to": _iso(BASE + timedelta(days=2)),
        "interval": "hour",
        "groupBy": "country",
        "limit": 2,
    }
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        one_scan = _query(api, **params)
        assert "running its fallback" not in caplog.text
        monkeypatch.setattr(sql, "ONE_SCAN_MAX_GROUP_ROWS", 3)
        with caplog.at_level("INFO", logger="metrics.selectors"):
            guarded = _query(api, **params)
    assert caplog.text.count("running its fallback") == 3
    assert guarded == one_scan
    assert all(len(m["series"]) == 2 for m in guarded["metrics"])


def test_rollups_are_used_when_they_answer(loaded: gen.Dataset) -> None:
    views = MetricDefinition.objects.get(name="views").compile()
    p95 = MetricDefinition.objects.get(name="video_startup_time_ms_p95").compile()
    aligned = query.MetricRequest(start=BASE, end=BASE + timedelta(days=2), interval="hour")
    cut = query.MetricRequest(start=BASE + timedelta(seconds=1), end=BASE + timedelta(days=2), interval="hour")
    minute = query.MetricRequest(start=BASE, end=BASE + timedelta(hours=2), interval="minute")
    by_country = query.MetricRequest(start=BASE, end=BASE + timedelta(days=2), interval="hour", group_by=("country",))
    by_video = query.MetricRequest(start=BASE, end=BASE + timedelta(days=2), group_by=("videoId",))
    assert query.query_build(views, aligned).table == "metrics_view_hour"
    assert query.query_build(views, minute).table == "metrics_view_minute"
    assert "FROM view_dimension_hour WHERE dimension = 'country'" in query.query_build(views, by_country).table
    assert query.query_build(views, by_video).table == "metrics_view_video_day"
    cut_table = query.query_build(views, cut).table
    assert "FROM metrics_view_" in cut_table and "FROM view_summaries" in cut_table
    assert query.query_build(p95, aligned).table == "view_summaries"  # quantiles need rows
    errors = MetricDefinition.objects.get(name="errors").compile()
    assert query.query_build(errors, aligned).table == "metrics_event_type_hour"
    assert query.query_build(errors, by_video).table == "event_video_hour"
    assert "FROM event_dimension_hour WHERE dimension = 'country'" in query.query_build(errors, by_country).table


def test_metric_added_in_admin_is_queryable_at_once(loaded: gen.Dataset, staff_user: Any, api: APIClient) -> None:
    admin = APIClient()
    admin.force_login(staff_user)
    form = {
        "name": "avg_rebuffer_ms_mobile",
        "description": "Average rebuffer duration of started views",
        "unit": "ms",
        "source": "views",
        "aggregation": "avg",
        "measure": "rebuffer_duration_ms",
        "conditions": ["started"],
        "event_types": "",
        "dimensions": ["country", "device"],
    }
    response = admin.post("/admin/metrics/metricdefinition/add/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    start, end = BASE, BASE + timedelta(days=3)
    body = _query(
        api, metric="avg_rebuffer_ms_mobile", **{"from": _iso(start), "to": _iso(end)}, interval="day", groupBy="device"
    )

    def avg_started(rows: list[dict]) -> float | None:
        values = [r["rebuffer_duration_ms"] for r in rows if r["started"]]
        return sum(values) / len(values) if values else None

    want = gen.expected(
        loaded,
        rows_kind="views",
        aggregate=avg_started,
        zero=False,
        start=start,
        end=end,
        interval="day",
        group_by=["device"],
    )
    assert body["metrics"][0]["unit"] == "ms"
    assert_series_equal(body["metrics"][0]["series"], want)
    # Its declared dimensions are enforced.
    response = api.get("/metrics", {"metric": "avg_rebuffer_ms_mobile", "groupBy": "videoId"})
    assert response.status_code == 400 and response.json()["error"]["field"] == "groupBy"

    # An edit takes effect at once too (the cache key includes the definition).
    definition = MetricDefinition.objects.get(name="avg_rebuffer_ms_mobile")
    definition.aggregation = "sum"
    definition.save()
    body = _query(api, metric="avg_rebuffer_ms_mobile", **{"from": _iso(start), "to": _iso(end)})
    assert body["metrics"][0]["series"][0]["total"] == sum(
        v["rebuffer_duration_ms"] for v in loaded.views if v["started"] and start <= v["start_ts"] < end
    )


def test_admin_refuses_a_definition_that_does_not_compile(staff_user: Any) -> None:
    admin = APIClient()
    admin.force_login(staff_user)
    form: dict[str, Any] = {
        "name": "broken",
        "unit": "ms",
        "source": "views",
        "aggregation": "sum",
        "measure": "watch_time_ms); DROP TABLE events; --",
    }
    response = admin.post("/admin/metrics/metricdefinition/add/", form)
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()  # measures are a choice now
    assert not MetricDefinition.objects.filter(name="broken").exists()
    form.update(measure="")
    response = admin.post("/admin/metrics/metricdefinition/add/", form)
    assert response.status_code == 200
    assert "needs a measure" in response.content.decode()
    assert not MetricDefinition.objects.filter(name="broken").exists()
    form.update(
        measure="",
        aggregation="ratio",
        numerator_aggregation="count",
        denominator_aggregation="count",
        conditions=["fatal"],  # a flag of raw events, not of view summaries
    )
    response = admin.post("/admin/metrics/metricdefinition/add/", form)
    assert response.status_code == 200 and "unknown condition" in response.content.decode()


def test_admin_change_page_shows_24h_preview(loaded: gen.Dataset, staff_user: Any) -> None:
    admin = APIClient()
    admin.force_login(staff_user)
    definition = MetricDefinition.objects.get(name="views")
    response = admin.get(f"/admin/metrics/metricdefinition/{definition.pk}/change/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="metric-preview"' in html and "Total:" in html
    assert 'id="metric-live-preview"' in html and "metrics/definition_preview" in html


def test_admin_live_preview_answers_the_unsaved_form(loaded: gen.Dataset, staff_user: Any) -> None:
    admin = APIClient()
    admin.force_login(staff_user)
    url = "/admin/metrics/metricdefinition/preview/"
    form: dict[str, Any] = {"name": "", "unit": "ms", "source": "views", "aggregation": "sum"}
    form["measure"] = "watch_time_ms"
    form["conditions"] = ["started", "!start_failure"]
    response = admin.post(url, form)
    assert response.status_code == 200, response.content
    body = response.json()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(hours=24)
    want = gen.expected(
        loaded,
        rows_kind="views",
        aggregate=lambda rows: sum(r["watch_time_ms"] for r in rows if r["started"] and not r["start_failure"]),
        zero=True,
        start=start,
        end=end,
        interval="hour",
    )[0]
    assert body["x"] == [p["t"] for p in want["points"]] and body["y"] == [p["value"] for p in want["points"]]
    assert body["total"] == want["total"] and body["hover"][0].endswith(("ms", "s", "min"))
    assert not MetricDefinition.objects.filter(source="views", measure="watch_time_ms", conditions=form["conditions"])

    # What saving would refuse, the preview refuses, naming the field.
    response = admin.post(url, {**form, "aggregation": "avg", "measure": ""})
    assert response.status_code == 400 and "needs a measure" in str(response.json()["errors"])
    response = admin.post(url, {**form, "quantile": "nan-ish"})
    assert response.status_code == 400 and "quantile" in response.json()["errors"]
    # Only through the admin: anonymous gets the login page, GET is refused.
    assert APIClient().post(url, form).status_code == 302
    assert admin.get(url).status_code == 405


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"metric": "nope"}, "metric"),
        ({}, "metric"),
        ({"metric": "views", "interval": "week"}, "interval"),
        ({"metric": "views", "groupBy": "planet"}, "groupBy"),
        ({"metric": "views", "groupBy": "type"}, "groupBy"),
        ({"metric": "views", "filter": "country"}, "filter"),
        ({"metric": "views", "filter": "planet:mars"}, "filter"),
        ({"metric": "views", "from": "yesterday"}, "from"),
        ({"metric": "views", "to": "2026-13-01T00:00:00Z"}, "to"),
        ({"metric": "views", "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "to"),
        ({"metric": "views", "limit": "0"}, "limit"),
        ({"metric": "views", "limit": "many"}, "limit"),
        (
            {"metric": "events", "from": "2025-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z", "interval": "minute"},
            "interval",
        ),
    ],
)
def test_invalid_parameters_give_400_naming_the_parameter(api: APIClient, params: dict, field: str) -> None:
    response = api.get("/metrics", params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["field"] == field, error
    assert error["message"]


def test_missing_or_bad_token_gives_401(staff_user: Any) -> None:
    response = APIClient().get("/metrics", {"metric": "views"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    response = client.get("/metrics", {"metric": "views"})
    assert response.status_code == 401 and response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "token_not_valid"


def test_expired_token_gives_401_and_refresh_gives_a_new_one(staff_user: Any) -> None:
    from rest_framework_simplejwt.tokens import AccessToken

    expired = AccessToken.for_user(staff_user)
    expired.set_exp(from_time=datetime.now(UTC) - timedelta(hours=2))  # signed, but expired an hour ago
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {expired}")
    response = client.get("/metrics", {"metric": "views"})
    assert response.status_code == 401
    assert response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "token_not_valid"
    tokens = APIClient().post("/auth/token", {"username": "analyst", "password": PASSWORD}, format="json").json()
    refreshed = APIClient().post("/auth/token/refresh", {"refresh": tokens["refresh"]}, format="json")
    assert refreshed.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert client.get("/metrics", {"metric": "events"}).status_code == 200
    bad = APIClient().post("/auth/token", {"username": "analyst", "password": "wrong"}, format="json")
    assert bad.status_code == 401


def test_identical_queries_are_served_from_cache(
    api: APIClient, loaded: gen.Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metrics import selectors

    cache.clear()
    calls: list[str] = []
    original = selectors.query_execute

    def counting(built: query.BuiltQuery, **kwargs: Any) -> list:
        calls.append(built.sql)
        return original(built, **kwargs)

    monkeypatch.setattr(selectors, "query_execute", counting)
    params = {
        "metric": "events",
        "from": _iso(BASE),
        "to": _iso(BASE + timedelta(days=1)),
        "interval": "hour",
        "filter": ["country:US", "device:tv"],
    }
    first = _query(api, **params)
    same = _query(api, **{**params, "filter": ["device:tv", "country:US"]})  # same question, other order
    assert first == same and len(calls) == 1
    _query(api, **{**params, "interval": "day"})
    assert len(calls) == 2
    with override_settings(METRICS_QUERY_CACHE_SECONDS=0):
        _query(api, **params)
    assert len(calls) == 3


def test_filter_values_are_bound_not_concatenated(api: APIClient, loaded: gen.Dataset) -> None:
    evil = "x') OR 1=1 --"
    body = _query(
        api, metric="events", filter=f"country:{evil}", **{"from": _iso(BASE), "to": _iso(BASE + timedelta(days=3))}
    )
    assert body["metrics"][0]["series"][0]["total"] == 0


def test_default_range_is_last_24_hours(api: APIClient, loaded: gen.Dataset) -> None:
    body = _query(api, metric="events")
    start = datetime.fromisoformat(body["from"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(body["to"].replace("Z", "+00:00"))
    assert end - start == timedelta(hours=24)
    assert 0 < (end - datetime.now(UTC)).total_seconds() <= 60 and end.second == 0


def test_openapi_schema_and_docs_page(api: APIClient) -> None:
    schema = APIClient().get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/metrics" in paths and "/auth/token" in paths and "/auth/token/refresh" in paths
    assert "202" in paths["/events"]["post"]["responses"]
    names = {p["name"] for p in paths["/metrics"]["get"]["parameters"]}
    assert {"metric", "from", "to", "interval", "groupBy", "filter", "limit"} <= names
    # drf-spectacular's own validation against the OpenAPI 3 meta-schema.
    validate_schema(SchemaGenerator().get_schema(request=None, public=True))
    for url, asset in (("/api/docs/", "swagger-ui-bundle.js"), ("/api/docs/redoc/", "redoc.standalone.js")):
        page = APIClient().get(url).content.decode()
        assert "/static/drf_spectacular_sidecar/" in page and asset in page
        assert "/api/schema/" in page
        # Served offline: no script or stylesheet from another host.
        assert not re.findall(r"""(?:src|href)=["']?(?:https?:)?//""", page), url


def test_events_are_documented_by_the_types_that_validate_them() -> None:
    """The OpenAPI body of POST /events accepts what ingest accepts and refuses what it refuses."""
    import json

    import jsonschema

    from ingest import schema as ingest_schema

    document = SchemaGenerator().get_schema(request=None, public=True)
    components = document["components"]["schemas"]
    event = components["IngestEvent"]
    assert set(event["required"]) == {"eventId", "type", "userId", "timestamp"}
    assert "receivedAt" not in event["properties"] and "cmcd" in event["properties"]
    assert components["IngestBatch"]["properties"]["events"]["maxItems"] == ingest_schema.MAX_EVENTS_PER_BATCH
    body_schema = {**components["IngestBatch"], "components": {"schemas": components}}
    validator = jsonschema.Draft202012Validator(body_schema)
    good: dict[str, Any] = {
        "sentAt": "2026-12-01T10:00:00Z",
        "events": [
            {
                "eventId": "6f1c2d7e-9a4b-4c1d-8e2f-3a5b6c7d8e9f",
                "type": "view_start",
                "userId": "u1",
                "sessionId": "s1",
                "videoId": "v1",
                "timestamp": 1764583200000,
                "properties": {"plan": "pro", "ab": [1, 2]},
                "cmcd": {"br": 3200, "ot": "v"},
            }
        ],
    }
    assert not list(validator.iter_errors(good))
    ingest_schema.batch_decode(json.dumps(good).encode())  # ingest agrees
    for field, bad in (("userId", "u" * 129), ("positionMs", -1), ("type", "View Start"), ("timestamp", -5)):
        wrong = {**good, "events": [{**good["events"][0], field: bad}]}
        assert list(validator.iter_errors(wrong)), field
        decoded = ingest_schema.batch_decode(json.dumps(wrong).encode())
        assert decoded.errors and decoded.errors[0].field == field, (field, decoded.errors)
