"""Server-rendered dashboards for staff: overview, per-video page, live view, player errors.

The pages call the same selector as ``GET /metrics`` (so numbers match the API) and embed the
series as JSON that metrics/static/metrics/charts.js hands to plotly.js (both loaded ``defer``; the
charts in view first, the others as they scroll into view or the browser is idle). plotly.js itself is a static
file taken from the installed ``plotly`` wheel (metrics/staticfiles.py): no CDN, no vendored copy,
no front-end build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from accounts.models import READ_METRICS
from analytics_platform.errors import ApplicationError
from metrics import bounds, query, units
from metrics.models import MetricDefinition
from metrics.selectors import Question, ingestion_lag_get, metric_timeseries_get, metric_timeseries_get_many
from streams import error_search


def metrics_reader_required(view: Any) -> Any:
    """A staff login (the admin's login page is the dashboards' too) holding ``accounts.read_metrics``:
    staff alone may manage allowlists or exports without reading every metric (403 otherwise)."""
    return staff_member_required(permission_required(READ_METRICS, raise_exception=True)(view))


#: The QoE charts of the overview and video pages, in reading order.
QOE_METRICS = (
    "viewer_experience_score",
    "playback_success_score",
    "startup_time_score",
    "smoothness_score",
    "video_quality_score",
    "concurrent_viewers",
    "views",
    "unique_viewers",
    "watch_time_ms",
    "video_startup_time_ms_p50",
    "video_startup_time_ms_p95",
    "video_start_failure_rate",
    "exits_before_video_start_rate",
    "rebuffer_ratio",
    "rebuffer_count",
    "rebuffer_frequency",
    "seek_latency",
    "upscale_percentage",
    "downscale_percentage",
    "max_upscale_percentage",
    "average_bitrate_kbps",
    "playback_failure_rate",
    "errors",
    "events",
)
BREAKDOWN_METRICS = (
    "viewer_experience_score",
    "views",
    "watch_time_ms",
    "video_startup_time_ms_p95",
    "rebuffer_ratio",
    "playback_failure_rate",
)
#: "Worst contributors": the score whose shortfall is shared out, and the view count it averages over.
CONTRIBUTION_SCORE = "viewer_experience_score"
CONTRIBUTORS_SHOWN = 5
CONTRIBUTORS_GROUPS = 1000
BREAKDOWN_DIMENSIONS = ("country", "device", "os", "browser", "cdn", "player", "videoId")
LIVE_METRICS = ("concurrent_viewers", "events", "errors", "views")

RANGES: dict[str, tuple[str, timedelta]] = {
    "1h": ("Last hour", timedelta(hours=1)),
    "6h": ("Last 6 hours", timedelta(hours=6)),
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    interval: str
    range_key: str


def _auto_interval(span: timedelta) -> str:
    if span <= timedelta(hours=6):
        return "minute"
    if span <= timedelta(days=7):
        return "hour"
    return "day"


def _window(request: HttpRequest) -> Window:
    """The range asked for: a preset (end rounded up to the bucket, so rollups can answer) or from/to."""
    raw_from, raw_to = request.GET.get("from"), request.GET.get("to")
    interval = request.GET.get("interval") or None
    if interval is not None and interval not in query.INTERVALS:
        raise ApplicationError("unknown interval", field="interval")
    if raw_from and raw_to:
        # The API's parser and bounds (metrics.bounds), except that a date without offset is UTC
        # here: these URLs are typed by people, and the page shows its range in UTC.
        try:
            start = bounds.moment_parse(raw_from, field="from", assume_utc=True)
            end = bounds.moment_parse(raw_to, field="to", assume_utc=True)
            start, end = bounds.range_resolve(start=start, end=end, now=datetime.now(UTC))
        except query.QueryError as exc:
            raise ApplicationError(exc.message, field=exc.field) from exc
        return Window(start, end, interval or _auto_interval(end - start), "custom")
    range_key = request.GET.get("range", "24h")
    if range_key not in RANGES:
        range_key = "24h"
    span = RANGES[range_key][1]
    interval = interval or _auto_interval(span)
    step = query.INTERVALS[interval][0]
    now = int(datetime.now(UTC).timestamp())
    end = datetime.fromtimestamp((now // step + 1) * step, UTC)
    return Window(end - span, end, interval, range_key)


def _available(names: tuple[str, ...]) -> list[str]:
    existing = set(MetricDefinition.objects.filter(name__in=names).values_list("name", flat=True))
    return [name for name in names if name in existing]


def _definitions_attach(charts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each chart's definition (description and formula), shown one click away on its card."""
    definitions = {d.name: d for d in MetricDefinition.objects.filter(name__in={c["metric"] for c in charts})}
    for chart in charts:
        definition = definitions.get(chart["metric"])
        chart["description"] = definition.description if definition else ""
        chart["formula"] = units.formula_describe(definition) if definition else ""
        # Axis and hover text in the units people read (h/min/s); the plotted values stay raw.
        chart["ticks"] = units.axis_ticks(chart["unit"], chart["y"])
        chart["tickformat"] = units.axis_tickformat(chart["unit"], chart["y"])
        chart["hover"] = [units.value_format(v, chart["unit"]) for v in chart["y"]]
    return charts


def _line_charts(body: Mapping[str, Any], prefix: str = "chart") -> list[dict[str, Any]]:
    charts = []
    for metric in body["metrics"]:
        series = metric["series"][0] if metric["series"] else {"points": [], "total": None}
        charts.append(
            {
                "id": f"{prefix}-{metric['metric']}",
                "metric": metric["metric"],
                "title": metric["metric"],
                "unit": metric["unit"],
                "kind": "line",
                "x": [p["t"] for p in series["points"]],
                "y": [p["value"] for p in series["points"]],
                "total": series["total"],
            }
        )
    return charts


def _bar_charts(body: Mapping[str, Any], dim: str) -> list[dict[str, Any]]:
    charts = []
    for metric in body["metrics"]:
        charts.append(
            {
                "id": f"breakdown-{metric['metric']}",
                "metric": metric["metric"],
                "title": f"{metric['metric']} by {dim}",
                "unit": metric["unit"],
                "kind": "bar",
                "x": [s["group"][dim] or "(none)" for s in metric["series"]],
                "y": [s["total"] for s in metric["series"]],
                "total": None,
            }
        )
    return charts


def worst_contributors(body: Mapping[str, Any], dim: str, *, shown: int = CONTRIBUTORS_SHOWN) -> list[dict[str, Any]]:
    """The values of ``dim`` that pull the score down most, from ``views`` and the score by ``dim``.

    The overall score is the views-weighted mean of the groups' scores (both count the views with
    a view_start), so its shortfall from 100 splits exactly into ``views_g * (100 - score_g) /
    views``: the points each value costs. Sorted by that, worst first.
    """
    by_metric = {m["metric"]: m["series"] for m in body["metrics"]}
    views = {tuple(sorted(s["group"].items())): s["total"] or 0 for s in by_metric.get("views", [])}
    total = sum(views.values())
    rows = []
    for series in by_metric.get(CONTRIBUTION_SCORE, []):
        key = tuple(sorted(series["group"].items()))
        count, score = views.get(key, 0), series["total"]
        if not count or score is None or not total:
            continue
        rows.append(
            {
                "value": series["group"][dim] or "(none)",
                "views": count,
                "score": score,
                "points_lost": count * (100 - score) / total,
            }
        )
    rows.sort(key=lambda r: (-r["points_lost"], r["value"]))
    return rows[:shown]


def _dashboard(request: HttpRequest, *, video_id: str | None) -> HttpResponse:
    try:
        window = _window(request)
    except ApplicationError as exc:
        return render(request, "metrics/error.html", {"message": exc.message}, status=400)
    breakdown = request.GET.get("breakdown", "country")
    if breakdown not in BREAKDOWN_DIMENSIONS or (video_id and breakdown == "videoId"):
        breakdown = "country"
    filters = [("videoId", video_id)] if video_id else []
    # The page's questions are independent: asked together, all their queries share the pool.
    available = set(_available((*QOE_METRICS, *BREAKDOWN_METRICS, "views", CONTRIBUTION_SCORE)))
    common: Question = {"metrics": (), "start": window.start, "end": window.end, "filters": filters}
    questions: list[Question] = [
        {**common, "metrics": [m for m in QOE_METRICS if m in available], "interval": window.interval},
        {
            **common,
            "metrics": [m for m in BREAKDOWN_METRICS if m in available],
            "group_by": [breakdown],
            "limit": 10,
        },
        {
            **common,
            "metrics": [m for m in ("views", CONTRIBUTION_SCORE) if m in available],
            "group_by": [breakdown],
            "limit": CONTRIBUTORS_GROUPS,
        },
    ]
    if not video_id:
        questions.append(
            {**common, "metrics": [m for m in ("views",) if m in available], "group_by": ["videoId"], "limit": 20}
        )
    try:
        series, by_dim, contributions, *rest = metric_timeseries_get_many(questions)
    except ApplicationError as exc:
        return render(request, "metrics/error.html", {"message": exc.message}, status=exc.status_code)
    top_videos = rest[0] if rest else None
    charts = _definitions_attach(_line_charts(series) + _bar_charts(by_dim, breakdown))
    videos = []
    if top_videos and top_videos["metrics"]:
        videos = [
            {
                "id": s["group"]["videoId"],
                "views": s["total"],
                "url": reverse("metrics:video", args=[s["group"]["videoId"]]),
            }
            for s in top_videos["metrics"][0]["series"]
            if s["group"]["videoId"]
        ]
    context = {
        "window": window,
        "ranges": [(key, label) for key, (label, _) in RANGES.items()],
        "intervals": list(query.INTERVALS),
        "breakdown": breakdown,
        "breakdowns": [d for d in BREAKDOWN_DIMENSIONS if not (video_id and d == "videoId")],
        "line_charts": [c for c in charts if c["kind"] == "line"],
        "bar_charts": [c for c in charts if c["kind"] == "bar"],
        "charts": charts,
        "videos": videos,
        "video_id": video_id,
        "contributors": worst_contributors(contributions, breakdown),
    }
    return render(request, "metrics/overview.html", context)


@metrics_reader_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    return _dashboard(request, video_id=None)


@metrics_reader_required
@require_GET
def video(request: HttpRequest, video_id: str) -> HttpResponse:
    return _dashboard(request, video_id=video_id)


@metrics_reader_required
@require_GET
def live(request: HttpRequest) -> HttpResponse:
    """The last minutes per minute, re-rendered every ``refresh`` seconds, with ingestion lag."""
    minutes = 15
    now = int(datetime.now(UTC).timestamp())
    end = datetime.fromtimestamp((now // 60 + 1) * 60, UTC)
    start = end - timedelta(minutes=minutes)
    try:
        body = metric_timeseries_get(metrics=_available(LIVE_METRICS), start=start, end=end, interval="minute")
        by_type = metric_timeseries_get(metrics=_available(("events",)), start=start, end=end, group_by=["type"])
    except ApplicationError as exc:
        return render(request, "metrics/error.html", {"message": exc.message}, status=exc.status_code)
    charts = _definitions_attach(
        _line_charts(body, prefix="live") + [{**chart, "id": "live-by-type"} for chart in _bar_charts(by_type, "type")]
    )
    context = {
        "charts": charts,
        "line_charts": [c for c in charts if c["kind"] == "line"],
        "bar_charts": [c for c in charts if c["kind"] == "bar"],
        "lag": ingestion_lag_get(window=timedelta(minutes=minutes)),
        "refresh": 10,
        "start": start,
        "end": end,
    }
    return render(request, "metrics/live.html", context)


#: The error page's filters that the ClickHouse counts can apply too (page parameter -> metric dimension);
#: code, kind and the words of the message exist in the search index only.
ERROR_COUNT_FILTERS = {"video": "videoId", "country": "country", "device": "device"}


@metrics_reader_required
@require_GET
def errors(request: HttpRequest) -> HttpResponse:
    """Player errors searched in Elasticsearch (newest first), the ClickHouse error counts beside them."""
    try:
        window = _window(request)
        search = error_search.error_query_parse(request.GET.dict(), start=window.start, end=window.end)
    except ApplicationError as exc:
        return render(request, "metrics/error.html", {"message": exc.message}, status=400)
    except error_search.ErrorQueryError as exc:
        return render(request, "metrics/error.html", {"message": str(exc)}, status=400)
    filters = [(dim, search.filters[name]) for name, dim in ERROR_COUNT_FILTERS.items() if name in search.filters]
    available = _available(("errors",))
    try:
        counts: Mapping[str, Any] = (
            metric_timeseries_get(
                metrics=available, start=window.start, end=window.end, filters=filters, interval=window.interval
            )
            if available
            else {"metrics": []}
        )
    except ApplicationError as exc:
        return render(request, "metrics/error.html", {"message": exc.message}, status=exc.status_code)
    hits, unavailable = error_search.player_errors_find(query=search)
    for hit in hits.hits if hits else []:
        hit["time"] = str(hit.get("timestamp", ""))[:19].replace("T", " ")  # ISO, UTC, to the second
    charts = _definitions_attach(_line_charts(counts, prefix="errors"))
    context = {
        "window": window,
        "ranges": [(key, label) for key, (label, _) in RANGES.items()],
        "intervals": list(query.INTERVALS),
        "search": search,
        "params": {name: request.GET.get(name, "") for name in ("q", *error_search.FILTER_FIELDS)},
        "kinds": error_search.KINDS,
        "hits": hits,
        "unavailable": unavailable,
        "charts": charts,
        "line_charts": charts,
        "count_filters": [name for name in ERROR_COUNT_FILTERS if name in search.filters],
        "search_only_filters": (["message words"] if search.text else [])
        + [n for n in ("code", "kind") if n in search.filters],
    }
    return render(request, "metrics/errors.html", context)
