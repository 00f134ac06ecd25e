"""The query builder on plain data: compilation errors, rollup choice, parameters never inlined."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from metrics import query
from metrics.query import sql as query_sql

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def spec(**overrides: object) -> query.MetricSpec:
    fields: dict = {"name": "m", "source": "views", "aggregation": "count", "conditions": ("has_view_start",)}
    fields.update(overrides)
    return query.MetricSpec(**fields)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "Bad Name"}, "name"),
        ({"source": "users"}, "source"),
        ({"aggregation": "median"}, "aggregation"),
        ({"aggregation": "sum", "measure": "watch_time_ms; DROP TABLE events"}, "measure"),
        ({"aggregation": "count", "measure": "watch_time_ms"}, "measure"),
        ({"aggregation": "quantile", "measure": "startup_time_ms", "quantile": 1.5}, "quantile"),
        ({"conditions": ("started) OR (1=1",)}, "conditions"),
        (
            {"aggregation": "ratio", "numerator_aggregation": "avg", "denominator_aggregation": "count"},
            "numerator_aggregation",
        ),
        ({"aggregation": "ratio", "numerator_aggregation": "count"}, "denominator_aggregation"),
        ({"event_types": ("view_start",)}, "event_types"),  # view summaries have no event type
        ({"dimensions": ("type",)}, "dimensions"),
        ({"source": "events", "event_types": ("x' OR '1",), "conditions": ()}, "event_types"),
        ({"source": "event_video_hour"}, "source"),  # rollups are chosen, not named, unless selectable
    ],
)
def test_definitions_that_do_not_compile_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(query.QueryError) as excinfo:
        query.metric_compile(spec(**overrides))
    assert excinfo.value.field == field


def test_values_are_parameters_never_sql() -> None:
    metric = query.metric_compile(spec(source="events", conditions=(), event_types=("error",)))
    evil = "US') OR 1=1 --"
    request = query.MetricRequest(
        start=NOW - timedelta(hours=5, seconds=3),
        end=NOW,
        interval="hour",
        group_by=("country",),
        filters=(("country", evil),),
        limit=7,
    )
    built = query.query_build(metric, request)
    assert evil not in built.sql and "error" not in built.sql.replace("%(event_types)s", "")
    assert built.params["f0"] == [evil] and built.params["event_types"] == ["error"] and built.params["limit"] == 7
    assert "%(start_ms)s" in built.sql and "%(end_ms)s" in built.sql


def test_top_groups_plan_by_cardinality() -> None:
    """Low-cardinality groups are chosen in the series' one scan, guarded, with the two-scan plan as
    its fallback; videos (high cardinality) are narrowed first, as the fallback does."""
    views = query.metric_compile(spec())
    day = NOW.replace(hour=0)
    week = {"start": day - timedelta(days=7), "end": day, "interval": "hour", "limit": 3}
    by_country = query.query_build(views, query.MetricRequest(**week, group_by=("country",)))  # type: ignore[arg-type]
    assert "ARRAY JOIN m_rows" in by_country.sql and " IN (SELECT" not in by_country.sql
    assert by_country.sql.endswith(
        f"SETTINGS max_rows_to_group_by = {query_sql.ONE_SCAN_MAX_GROUP_ROWS}, group_by_overflow_mode = 'throw'"
    )
    fallback = by_country.fallback
    assert fallback is not None and fallback.fallback is None
    assert " IN (SELECT" in fallback.sql and "ARRAY JOIN m_rows" not in fallback.sql
    assert fallback.params is by_country.params and fallback.table == by_country.table
    by_video = query.query_build(views, query.MetricRequest(**week, group_by=("videoId", "country")))  # type: ignore[arg-type]
    assert by_video.fallback is None and " IN (SELECT" in by_video.sql and "m_rows" not in by_video.sql
    total = query.query_build(views, query.MetricRequest(start=week["start"], end=day, group_by=("country",)))  # type: ignore[arg-type]
    assert total.fallback is None and "m_rows" not in total.sql


def _tables(sql: str) -> set[str]:
    return set(re.findall(r"FROM (\w+)", sql))


def test_metrics_of_one_place_are_one_query() -> None:
    """Metrics of a question whose cheapest tables are the same place are one query (one scan),
    each its own value column; others (another table, other event types) keep their own."""
    views = query.metric_compile(spec(name="views"))
    watch = query.metric_compile(spec(name="watch", aggregation="sum", measure="watch_time_ms", conditions=()))
    failures = query.metric_compile(
        spec(
            name="failures",
            aggregation="ratio",
            numerator_aggregation="count",
            conditions=("start_failure",),
            denominator_aggregation="count",
            denominator_conditions=("has_view_start",),
        )
    )
    p95, p50 = (
        query.metric_compile(
            spec(
                name=f"p{q}",
                aggregation="quantile",
                measure="startup_time_ms",
                quantile=q / 100,
                conditions=("started",),
            )
        )
        for q in (95, 50)
    )
    events = query.metric_compile(spec(name="events", source="events", conditions=()))
    errors = query.metric_compile(spec(name="errors", source="events", event_types=("error",), conditions=()))
    question = [views, p95, events, watch, errors, p50, failures]
    day = NOW.replace(hour=0)
    hour = day + timedelta(hours=5)
    for request in (
        query.MetricRequest(start=day - timedelta(days=7), end=day, interval="hour"),
        # Not aligned: whole hours from a rollup and the edges from the minutes, the union reading
        # every member's columns.
        query.MetricRequest(start=hour - timedelta(days=3, minutes=3), end=hour, interval="hour"),
        # Grouped: each member's top groups kept (rank columns), one scan or narrowed first.
        query.MetricRequest(start=day - timedelta(days=7), end=day, interval="hour", group_by=("country",), limit=2),
        query.MetricRequest(start=day - timedelta(days=7), end=day, interval="hour", group_by=("videoId",), limit=2),
        query.MetricRequest(start=day - timedelta(days=7), end=day, group_by=("videoId",), limit=2),
    ):
        built = query.queries_build(question, request)
        assert [b.members for b in built] == [(0, 3, 6), (1, 5), (2,), (4,)], request
        fused, quantiles = built[0], built[1]
        assert all(f"AS m_value{j}" in fused.sql for j in range(3)) and "m_value3" not in fused.sql
        # Each member's own cheapest tables; a union reads every member's columns.
        for one, metrics in ((fused, (views, watch, failures)), (quantiles, (p95, p50))):
            assert all(_tables(one.table) == _tables(query.query_build(m, request).table) for m in metrics)
        if fused.table.startswith("(SELECT"):
            assert all(column in fused.table for column in ("views", "watch_time_ms", "start_failures"))
        # Two quantile levels in one statement: each its own parameter.
        assert {k: v for k, v in quantiles.params.items() if k.startswith("q")} == {"q0_0": 0.95, "q1_0": 0.5}
        if request.group_by:
            assert "m_r0 <= %(limit)s OR m_r1 <= %(limit)s OR m_r2 <= %(limit)s" in fused.sql
    assert query.query_build(views, request).members == (0,)


def test_rollup_choice() -> None:
    views = query.metric_compile(spec())
    p95 = query.metric_compile(
        spec(aggregation="quantile", measure="startup_time_ms", quantile=0.95, conditions=("started",))
    )
    day = NOW.replace(hour=0)

    def table(metric: query.CompiledMetric, **kw: object) -> str:
        return query.query_build(metric, query.MetricRequest(**kw)).table  # type: ignore[arg-type]

    assert table(views, start=day - timedelta(days=7), end=day, interval="day") == "metrics_view_hour"
    assert table(views, start=day - timedelta(days=7), end=day) == "metrics_view_hour"
    assert table(views, start=day - timedelta(days=7), end=day, group_by=("videoId",)) == "metrics_view_video_day"
    hour = day + timedelta(hours=5)  # hour-aligned, not day-aligned
    split = table(views, start=hour - timedelta(days=7), end=hour, group_by=("videoId",))
    assert (
        split.startswith("(SELECT") and "FROM metrics_view_video_day" in split and "FROM view_dimension_hour" in split
    )
    split = table(views, start=hour - timedelta(days=3, minutes=3), end=hour, interval="hour")
    assert "FROM metrics_view_hour" in split and "FROM metrics_view_minute" in split
    # One dimension (or the video) per hour: the views' pivot rollup (streams 0011); two: view_rollup_hour.
    by_country = table(views, start=day - timedelta(days=7), end=day, group_by=("country",))
    assert "FROM view_dimension_hour WHERE dimension = 'country'" in by_country
    hourly_by_video = table(views, start=day - timedelta(days=7), end=day, interval="hour", group_by=("videoId",))
    assert "FROM view_dimension_hour WHERE dimension = 'video_id'" in hourly_by_video
    assert "value AS video_id" in hourly_by_video
    two = (("country", "US"), ("device", "tv"))
    assert table(views, start=day - timedelta(days=7), end=day, group_by=("os",), filters=two) == "view_rollup_hour"
    assert table(views, start=NOW - timedelta(minutes=90), end=NOW, interval="minute") == "metrics_view_minute"
    assert table(views, start=NOW - timedelta(minutes=90), end=NOW, interval="hour") == "metrics_view_minute"
    # No minute rollup holds a dimension (streams 0009): per minute by country is read raw.
    assert (
        table(views, start=NOW - timedelta(minutes=90), end=NOW, interval="minute", filters=(("country", "US"),))
        == "view_summaries"
    )
    by_country = table(views, start=day - timedelta(days=2, minutes=5), end=day, filters=(("country", "US"),))
    assert "FROM view_dimension_hour" in by_country and "FROM view_summaries" in by_country
    # Without a dimension the pivot is never read: it holds each view seven times.
    assert "view_dimension_hour" not in table(views, start=day - timedelta(days=7), end=day, interval="hour")
    errors = query.metric_compile(spec(source="events", event_types=("error",), conditions=()))
    assert table(errors, start=day - timedelta(days=7), end=day, interval="hour") == "metrics_event_type_hour"
    assert table(errors, start=NOW - timedelta(minutes=90), end=NOW, interval="minute") == "metrics_event_type_minute"
    video = (("videoId", "v1"),)
    assert table(errors, start=day - timedelta(days=7), end=day, interval="day", filters=video) == "event_video_hour"
    # One dimension besides type: the pivot rollup's rows of that dimension (streams 0010).
    one = table(errors, start=day - timedelta(days=7), end=day, filters=(("country", "US"),))
    assert one.startswith("(SELECT") and "FROM event_dimension_hour WHERE dimension = 'country'" in one
    assert "value AS country" in one
    by_os = table(errors, start=day - timedelta(days=7), end=day, interval="hour", group_by=("os",))
    assert "FROM event_dimension_hour WHERE dimension = 'os'" in by_os
    # Two dimensions at once, or per minute: the raw rows (summed over names a row would count 6 times).
    two = (("country", "US"), ("device", "tv"))
    assert table(errors, start=day - timedelta(days=7), end=day, filters=two) == "events"
    assert table(errors, start=NOW - timedelta(minutes=90), end=NOW, interval="minute", group_by=("os",)) == "events"
    # Unaligned: whole hours from the pivot, the edges from the raw rows, both by country.
    cut = table(errors, start=day - timedelta(days=1, minutes=7), end=day, group_by=("country",))
    assert "FROM event_dimension_hour WHERE dimension = 'country'" in cut and "FROM events" in cut
    # Without any dimension the pivot is never read: it holds each event six times.
    events = query.metric_compile(spec(source="events", conditions=()))
    assert "event_dimension_hour" not in table(events, start=day - timedelta(days=7), end=day, interval="hour")
    # Not aligned on any rollup: whole buckets from a rollup, the edges from the raw rows.
    split = table(views, start=NOW - timedelta(minutes=90, seconds=1), end=NOW, interval="hour")
    assert "FROM metrics_view_minute" in split and "FROM view_summaries" in split
    assert "toUInt64((has_view_start)) AS views" in split
    # Beyond the minute rollup's 30-day TTL, the hour rollup; beyond 400 days, the raw table.
    assert table(
        views, start=NOW - timedelta(days=40), end=NOW - timedelta(days=39, minutes=59), interval="minute"
    ) == ("view_summaries")
    assert table(views, start=NOW - timedelta(days=500), end=NOW, interval="day") == "view_summaries"
    assert table(p95, start=day - timedelta(days=7), end=day, interval="day") == "view_summaries"
    avg_startup = query.metric_compile(spec(aggregation="avg", measure="startup_time_ms", conditions=("started",)))
    assert table(avg_startup, start=day - timedelta(days=1), end=day, interval="hour") == "metrics_view_hour"
    negated = query.metric_compile(spec(conditions=("!started",)))
    assert table(negated, start=day - timedelta(days=1), end=day, interval="hour") == "view_summaries"


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"group_by": ("type",)}, "groupBy"),
        ({"filters": (("type", "error"),)}, "filter"),
    ],
)
def test_requests_outside_the_definition_are_refused(kw: dict, field: str) -> None:
    """What the definition allows; the bounds of a request are metrics.bounds' (test_bounds.py)."""
    fields: dict = {"start": NOW - timedelta(days=1), "end": NOW}
    fields.update(kw)
    with pytest.raises(query.QueryError) as excinfo:
        query.query_build(query.metric_compile(spec()), query.MetricRequest(**fields))
    assert excinfo.value.field == field


def test_empty_buckets_are_zero_for_counts_and_null_for_ratios() -> None:
    request = query.MetricRequest(start=NOW - timedelta(hours=3, minutes=30), end=NOW, interval="hour")
    count = query.metric_compile(spec())
    ratio = query.metric_compile(
        spec(
            aggregation="ratio",
            numerator_aggregation="count",
            conditions=("start_failure",),
            denominator_aggregation="count",
            denominator_conditions=("has_view_start",),
        )
    )
    first = int((NOW - timedelta(hours=4)).timestamp())
    rows = [(first + 3600, 0, 5), (0, 1, 5)]
    assert [p["value"] for p in query.series_assemble(count, request, rows)[0]["points"]] == [0, 5, 0, 0]
    assert [
        p["value"] for p in query.series_assemble(ratio, request, [(first + 3600, 0, 0.5), (0, 1, 0.5)])[0]["points"]
    ] == [
        None,
        0.5,
        None,
        None,
    ]
    assert query.series_assemble(ratio, request, [])[0]["total"] is None
    assert query.series_assemble(count, request, [])[0]["total"] == 0
