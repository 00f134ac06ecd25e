"""/dashboards/errors in headless Chromium, on what a real pipeline run left behind.

The run: a message with a fatal error (its message unique to the run) and an event that breaks
the contract is produced to the broker; the stream worker writes ClickHouse and publishes the
VideoError and the dead letter; ``index_errors`` (its own process) indexes them into osmem. Then
an analyst logs in, opens Errors, searches words of the message and finds it, with the ClickHouse
error count beside the hits. Screenshots under ``artifacts/screenshots/``.
"""

from __future__ import annotations

import shutil
import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tests.logs.osmem import PlainJsonNode
from tests.metrics.conftest import PASSWORD
from tests.metrics.test_browser import CHROMIUM, SCREENSHOTS, _ensure_builtins
from tests.streams.conftest import wait_until
from tests.streams.errors_support import error_run, indexed, indexer_start, osmem  # noqa: F401
from tests.support.auth import metrics_reader_grant

pytestmark = [
    pytest.mark.browser,
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.elasticsearch,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, databases=["default", "clickhouse"]),
]


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")
def test_an_error_of_a_real_run_is_found_on_the_errors_page(stream_env, osmem, live_server: Any, settings):  # noqa: F811
    from playwright.sync_api import sync_playwright

    run = error_run()
    prefix = f"pe-{uuid.uuid4().hex[:10]}"
    stream_env.worker_start()
    indexer_start(stream_env, url=osmem.url, prefix=prefix)
    stream_env.produce(run.messages)
    wait_until(lambda: len(indexed(osmem, prefix)) >= 2, timeout=90, what="the run's errors indexed")
    client = stream_env.clickhouse()
    wait_until(
        lambda: client.execute("SELECT count() FROM events WHERE video_id = %(v)s", {"v": run.video_id})[0][0] == 2,
        timeout=60,
        what="the run's events in ClickHouse",
    )
    client.disconnect()

    settings.ELASTICSEARCH_ERRORS_URL = osmem.url
    settings.ELASTICSEARCH_ERRORS_INDEX_PREFIX = prefix
    settings.ELASTICSEARCH_ERRORS_NODE_CLASS = PlainJsonNode  # test double only (tests/logs/osmem.py)
    settings.METRICS_QUERY_CACHE_SECONDS = 0
    _ensure_builtins()
    metrics_reader_grant(get_user_model().objects.create_user(username="analyst", password=PASSWORD, is_staff=True))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            outside: list[str] = []
            page.on(
                "request",
                lambda r: None if r.url.startswith((live_server.url, "data:", "blob:")) else outside.append(r.url),
            )
            page.goto(f"{live_server.url}/dashboards/")
            assert "/admin/login/" in page.url  # the same staff login as every dashboard page
            page.fill("#id_username", "analyst")
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url("**/dashboards/**")
            page.click("header >> text=Errors")
            page.wait_for_url("**/dashboards/errors")

            # Words of the message, in another order and case: the run's error is the one hit.
            words = run.message.split()
            page.fill("#q", f"{words[4].upper()} {words[1]}")
            page.click("#apply")
            page.wait_for_url("**q=**")
            assert page.get_attribute("#hit-count", "data-value") == "1"
            hit = page.locator("#hits tr.hit").first
            assert hit.locator(".message").inner_text() == run.message
            assert hit.locator(".code").inner_text() == run.code
            page.screenshot(path=str(SCREENSHOTS / "errors-search.png"), full_page=True)

            # Filters: the run's video and the dead letters; the counts beside follow the video filter.
            page.fill("#q", "")
            page.fill("#video", run.video_id)
            page.click("#apply")
            page.wait_for_url(f"**video={run.video_id}**")
            page.wait_for_selector("#errors-errors[data-drawn='1']", timeout=20_000)
            assert page.get_attribute("#total-errors-errors", "data-value") == "1"  # the valid error event
            assert "videoId" not in page.inner_text("#count-filters")  # named as the page names it
            assert "video" in page.inner_text("#count-filters")
            page.select_option("#kind", "dead_letter")
            page.fill("#video", "")
            page.click("#apply")
            page.wait_for_url("**kind=dead_letter**")
            codes = page.locator("#hits tr.hit .code").all_inner_texts()
            assert codes == ["invalid_event"], codes
            page.screenshot(path=str(SCREENSHOTS / "errors-dead-letters.png"), full_page=True)

            # A search box is not a query language; an oversized one is refused, not run.
            response = page.goto(f"{live_server.url}/dashboards/errors?q={'x' * 201}")
            assert response is not None and response.status == 400
            page.goto(f"{live_server.url}/dashboards/errors?q=*%20OR%20manifest")
            assert page.get_attribute("#hit-count", "data-value") == "0"

            # Elasticsearch gone: the page says so and still shows the ClickHouse counts.
            settings.ELASTICSEARCH_ERRORS_URL = "http://127.0.0.1:9"
            response = page.goto(f"{live_server.url}/dashboards/errors?video={run.video_id}")
            assert response is not None and response.status == 200
            assert "unavailable" in page.inner_text("#search-unavailable")
            page.wait_for_selector("#errors-errors[data-drawn='1']", timeout=20_000)
            page.screenshot(path=str(SCREENSHOTS / "errors-search-down.png"), full_page=True)
            assert outside == []
        finally:
            browser.close()
