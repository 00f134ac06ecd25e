"""The dashboards in headless Chromium (Debian's, driven by the PyPI playwright package).

Screenshots land in ``artifacts/screenshots/`` (git-ignored) so CI can keep them as artifacts.
"""

from __future__ import annotations

import math
import re
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from analytics_platform.clickhouse import client_get
from metrics import units
from metrics.models import MetricDefinition
from tests.metrics import data as gen
from tests.metrics.conftest import PASSWORD
from tests.support.auth import metrics_reader_grant

pytestmark = [
    pytest.mark.browser,
    pytest.mark.clickhouse,
    pytest.mark.django_db(transaction=True, databases=["default", "clickhouse"]),
]

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def _ensure_builtins() -> None:
    """A transactional test may run after another flushed the tables the data migration filled."""
    if not MetricDefinition.objects.filter(builtin=True).exists():
        import importlib

        for name in (
            "0002_builtin_metrics",
            "0005_qoe_scores",
            "0006_quality_and_seek_latency",
            "0007_concurrent_viewers",
        ):
            importlib.import_module(f"metrics.migrations.{name}").create_builtins(django_apps, None)


#: Run before each page's scripts: the ids of the charts in the order they get data-drawn.
DRAWN_ORDER = """window.__drawnOrder = [];
new MutationObserver(records => records.forEach(r => {
  const id = r.target.id;
  if (r.target.dataset.drawn === "1" && !window.__drawnOrder.includes(id)) { window.__drawnOrder.push(id); }
})).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-drawn"]});"""
#: Resolves with that order once every chart of the page is drawn.
ALL_DRAWN = """() => new Promise(resolve => {
  const ids = JSON.parse(document.getElementById("charts-data").textContent).map(c => c.id);
  const order = window.__drawnOrder;
  const done = () => order.length < ids.length ? requestAnimationFrame(done) : resolve(order);
  done();
})"""
#: The charts the viewport shows.
IN_VIEW = """() => Array.from(document.querySelectorAll(".chart")).filter(el => {
  const r = el.getBoundingClientRect();
  return r.bottom > 0 && r.top < innerHeight;
}).map(el => el.id)"""


def _window(span: timedelta, step: int) -> tuple[datetime, datetime]:
    now = int(datetime.now(UTC).timestamp())
    end = datetime.fromtimestamp((now // step + 1) * step, UTC)
    return end - span, end


def _truth(data: gen.Dataset, name: str, start: datetime, end: datetime, interval: str, **kw: Any) -> list[dict]:
    kind, aggregate, zero = gen.TRUTH[name]
    series = gen.expected(
        data, rows_kind=kind, aggregate=aggregate, zero=zero, start=start, end=end, interval=interval, **kw
    )
    return series[0]["points"]


def _chart(page: Any, chart_id: str) -> dict:
    page.wait_for_selector(f"#{chart_id}[data-drawn='1']", timeout=20_000)
    result: dict = page.evaluate(
        "id => { const d = document.getElementById(id).data[0]; return {x: Array.from(d.x), y: Array.from(d.y)}; }",
        chart_id,
    )
    return result


def _dense_chart(page: Any, chart_id: str) -> dict:
    """A chart's first trace, the series the server sent for it, its second trace and how many markers it drew."""
    page.wait_for_selector(f"#{chart_id}[data-drawn='1']", timeout=20_000)
    result: dict = page.evaluate(
        """id => {
          const el = document.getElementById(id), d = el.data;
          const sent = JSON.parse(document.getElementById("charts-data").textContent).find(c => c.id === id);
          return {
            x: Array.from(d[0].x), y: Array.from(d[0].y), mode: d[0].mode, server_x: sent.x, server_y: sent.y,
            lone: d[1] ? Array.from(d[1].x).map((x, i) => [x, d[1].y[i]]) : null,
            markers: el.querySelectorAll(".scatterlayer .point").length,
          };
        }""",
        chart_id,
    )
    return result


def _assert_chart(chart: dict, points: list[dict]) -> None:
    assert [x.replace("+00:00", "Z") for x in chart["x"]] == [p["t"] for p in points]
    assert chart["y"] == [p["value"] for p in points]


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (apt-get install -y chromium)"
)
def test_dashboards_in_headless_chromium(live_server: Any, loaded: gen.Dataset) -> None:
    from playwright.sync_api import sync_playwright

    _ensure_builtins()
    analyst = get_user_model().objects.create_user(username="analyst", password=PASSWORD, is_staff=True)
    # Edits metric definitions in the admin (the live preview below).
    analyst.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_metricdefinition", "change_metricdefinition", "view_allowlistrule", "add_allowlistrule"]
        )
    )
    metrics_reader_grant(analyst)
    views_pk = MetricDefinition.objects.get(name="views").pk
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # No page loads anything from outside the server (no CDN, no web fonts): a request
            # elsewhere is only allowed if the page's Content-Security-Policy stopped it in the browser.
            outside: list[str] = []
            blocked: dict[str, str] = {}
            page.on(
                "request",
                lambda r: None if r.url.startswith((live_server.url, "data:", "blob:")) else outside.append(r.url),
            )
            page.on("requestfailed", lambda r: blocked.__setitem__(r.url, r.failure or ""))  # "csp" when blocked
            page.goto(f"{live_server.url}/dashboards/?range=7d")
            # Not logged in: the admin login page, then back to the dashboard.
            assert "/admin/login/" in page.url
            page.fill("#id_username", "analyst")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/dashboards/**")

            start, end = _window(timedelta(days=7), 3600)
            _assert_chart(_chart(page, "chart-views"), _truth(loaded, "views", start, end, "hour"))
            _assert_chart(_chart(page, "chart-rebuffer_ratio"), _truth(loaded, "rebuffer_ratio", start, end, "hour"))
            concurrent = _truth(loaded, "concurrent_viewers", start, end, "hour")
            _assert_chart(_chart(page, "chart-concurrent_viewers"), concurrent)
            quality = _chart(page, "chart-video_quality_score")
            want = [p["value"] for p in _truth(loaded, "video_quality_score", start, end, "hour")]
            assert [v is None for v in quality["y"]] == [v is None for v in want] and any(v is not None for v in want)
            assert all(g is None or math.isclose(g, w, rel_tol=1e-9) for g, w in zip(quality["y"], want, strict=True))
            # 168 points fit the plot's width: a line with a marker per point.
            assert page.evaluate("document.getElementById('chart-views').data[0].mode") == "lines+markers"
            page.screenshot(path=str(SCREENSHOTS / "overview-7d.png"), full_page=True)

            # 24 h per minute (chosen; auto is per hour): 1,440 points, more than the plot is wide.
            # Every point is still the series (hover included), drawn as the line alone, with
            # markers on the points between two gaps (which a line cannot show) and nowhere else.
            page.goto(f"{live_server.url}/dashboards/?range=24h&interval=minute")
            dense = _dense_chart(page, "chart-rebuffer_ratio")
            assert len(dense["x"]) == 1440 and dense["mode"] == "lines"
            assert (dense["x"], dense["y"]) == (dense["server_x"], dense["server_y"])
            y = dense["y"]
            lone = [
                (dense["x"][i], v)
                for i, v in enumerate(y)
                if v is not None and (i == 0 or y[i - 1] is None) and (i == len(y) - 1 or y[i + 1] is None)
            ]
            assert lone, "the data set leaves per-minute ratios with gaps around single points"
            assert dense["lone"] == [list(p) for p in lone]
            assert dense["markers"] == len(lone)

            # Opened scrolled to its bottom (the fragment): the charts in view are drawn before the
            # others, although they come last in the page (the idle slices draw in page order).
            page.add_init_script(DRAWN_ORDER)
            page.goto(f"{live_server.url}/dashboards/?range=7d#top-videos")
            order = page.evaluate(ALL_DRAWN)
            in_view = page.evaluate(IN_VIEW)
            assert in_view and "chart-views" not in in_view and all(i.startswith("breakdown-") for i in in_view)
            assert set(order[: len(in_view)]) == set(in_view), (order, in_view)
            page.goto(f"{live_server.url}/dashboards/?range=7d")  # the form below starts from auto intervals

            # Change the range: 30 days, per day.
            page.select_option("#range", "30d")
            page.click("#apply")
            page.wait_for_url("**range=30d**")
            start, end = _window(timedelta(days=30), 86400)
            _assert_chart(_chart(page, "chart-views"), _truth(loaded, "views", start, end, "day"))
            _assert_chart(_chart(page, "chart-watch_time_ms"), _truth(loaded, "watch_time_ms", start, end, "day"))
            views_total = sum(1 for v in loaded.views if v["has_view_start"] and start <= v["start_ts"] < end)
            assert int(page.get_attribute("#total-chart-views", "data-value") or "") == views_total
            assert page.inner_text("#total-chart-views") == units.value_format(views_total, "count")
            # Units people read: watch time in h/min/s, ratios in %, the definition one click away.
            watch = float(page.get_attribute("#total-chart-watch_time_ms", "data-value") or "")
            watch_text = page.inner_text("#total-chart-watch_time_ms")
            assert watch_text == units.duration_format(watch) and re.fullmatch(r"[\d,]+ h \d+ min", watch_text)
            # Its axis too: ticks at whole hours (or minutes), written like the total, never "164M".
            ticks = page.eval_on_selector_all("#chart-watch_time_ms .ytick text", "ns => ns.map(n => n.textContent)")
            assert ticks and all(re.fullmatch(r"0 ms|[\d,]+ h \d+ min|\d+ min \d+ s", t) for t in ticks), ticks
            ratio = float(page.get_attribute("#total-chart-rebuffer_ratio", "data-value") or "")
            assert page.inner_text("#total-chart-rebuffer_ratio") == f"{ratio * 100:.2f} %"
            definition = page.locator("#definition-chart-rebuffer_ratio")
            assert not definition.locator("code").is_visible()
            definition.locator("summary").click()
            formula = definition.locator("code").inner_text()
            assert " / " in formula and "rebuffer" in formula, formula
            assert "UTC" in page.inner_text("#window")
            breakdown = _chart(page, "breakdown-views")
            assert len(breakdown["x"]) == len(gen.DIM_VALUES["country"])
            page.screenshot(path=str(SCREENSHOTS / "overview-30d.png"), full_page=True)

            # Open the page of the most viewed video.
            link = page.locator("#top-videos a").first
            video_id = link.inner_text()
            link.click()
            page.wait_for_url(f"**/dashboards/videos/{video_id}**")
            assert page.inner_text("#video-id") == video_id
            start, end = _window(timedelta(days=30), 86400)
            _assert_chart(
                _chart(page, "chart-views"),
                _truth(loaded, "views", start, end, "day", filters=[("videoId", video_id)]),
            )
            page.screenshot(path=str(SCREENSHOTS / "video.png"), full_page=True)

            # Live: a few events that arrived seconds ago show up, with the ingestion lag.
            now = datetime.now(UTC)
            fresh = gen.Dataset(base=now)
            for i, event in enumerate(loaded.events[:7]):
                fresh.events.append(
                    {
                        **event,
                        "event_id": uuid.uuid4(),
                        "ts": now - timedelta(seconds=30 + i),
                        "received_at": now - timedelta(seconds=3 + i),
                    }
                )
            client = client_get()
            try:
                gen.insert(client, fresh)
            finally:
                client.disconnect()
            page.goto(f"{live_server.url}/dashboards/live")
            lag = float(page.inner_text("#lag-value").split()[0])
            assert 3 <= lag < 60
            assert page.inner_text("#total-live-events").split()[0] == "7"
            assert sum(_chart(page, "live-events")["y"]) == 7
            page.screenshot(path=str(SCREENSHOTS / "live.png"), full_page=True)

            # The admin's live preview of a definition being edited, before it is saved.
            page.goto(f"{live_server.url}/admin/metrics/metricdefinition/{views_pk}/change/")
            page.wait_for_selector("#metric-live-preview[data-drawn='1']", timeout=20_000)
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            start = end - timedelta(hours=24)
            in_day = [v for v in loaded.views if start <= v["start_ts"] < end]
            assert float(page.get_attribute("#metric-live-preview", "data-total") or "") == sum(
                1 for v in in_day if v["has_view_start"]
            )
            page.check("input[name=conditions][value=started]")
            page.wait_for_selector("#metric-live-preview[data-drawn='2']", timeout=20_000)
            assert float(page.get_attribute("#metric-live-preview", "data-total") or "") == sum(
                1 for v in in_day if v["has_view_start"] and v["started"]
            )
            page.screenshot(path=str(SCREENSHOTS / "admin-definition-preview.png"), full_page=True)

            # An allowlist rule added in the admin, then an address tested against every scope.
            page.goto(f"{live_server.url}/admin/ingest/allowlistrule/")
            page.click("#test-address-link")
            page.wait_for_url("**/test-address/")
            page.goto(f"{live_server.url}/admin/ingest/allowlistrule/add/")
            page.fill("#id_cidr", "::ffff:198.51.100.0/120")
            page.select_option("#id_scope", "api")
            page.fill("#id_note", "analysts' office")
            page.click("input[name=_save]")
            page.wait_for_url("**/admin/ingest/allowlistrule/")
            assert "198.51.100.0/24" in page.inner_text("#result_list")  # stored as the IPv4 it means
            page.click("#test-address-link")
            page.fill("#id_address", "198.51.100.77")
            page.click("#test-address-form input[type=submit]")
            page.wait_for_selector("#decisions")
            assert page.get_attribute("#decision-api", "data-allowed") == "1"
            assert "analysts' office" in page.inner_text("#decision-api")
            assert page.get_attribute("#decision-ingest", "data-allowed") == "0"
            assert "198.51.100.0/24" in page.inner_text("#effective-api")
            page.screenshot(path=str(SCREENSHOTS / "admin-allowlist-test-address.png"), full_page=True)

            page.goto(f"{live_server.url}/api/docs/")
            # Swagger UI (drf-spectacular-sidecar) renders both public endpoints from /api/schema/.
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert "/metrics" in paths and "/events" in paths
            page.screenshot(path=str(SCREENSHOTS / "api-docs.png"), full_page=True)
            page.goto(f"{live_server.url}/api/docs/redoc/")
            page.wait_for_selector("[data-section-id='tag/events']", timeout=20_000)
            page.screenshot(path=str(SCREENSHOTS / "api-docs-redoc.png"), full_page=True)
            assert all(blocked.get(url) == "csp" for url in outside), (outside, blocked)
        finally:
            browser.close()
    assert MetricDefinition.objects.get(pk=views_pk).conditions == ["has_view_start"]  # previewed, not saved
