"""``/demo/``: the page, its clip, and a view played in headless Chromium through the whole local
stack (``manage.py devstack``, what ``make run`` runs) until GET /metrics shows it."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import time
import urllib.parse
import urllib.request
import wave
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from analytics_platform.demo import CLIP_SECONDS, DEMO_VIDEO_ID
from analytics_platform.devstack.processes import free_port
from tests.test_devstack import _start, _stop, _wait_ready

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.django_db  # the page shows the demo's write key
def test_the_page_loads_the_sdk_and_the_local_clip(client: Client) -> None:
    response = client.get("/demo/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'import { createTracker } from "/sdk/player.mjs"' in page
    assert 'src="/demo/clip.wav"' in page
    assert "http://" not in page and "https://" not in page  # nothing from outside the server


def test_the_clip_is_a_seekable_wav_of_the_stated_length(client: Client) -> None:
    response = client.get("/demo/clip.wav")
    assert response.status_code == 200 and response["Content-Type"] == "audio/wav"
    body = response.content
    with wave.open(io.BytesIO(body)) as clip:
        assert clip.getnframes() / clip.getframerate() == CLIP_SECONDS
    assert response["Accept-Ranges"] == "bytes"
    part = client.get("/demo/clip.wav", HTTP_RANGE="bytes=100-199")
    assert part.status_code == 206 and part.content == body[100:200]
    assert part["Content-Range"] == f"bytes 100-199/{len(body)}"
    assert client.get("/demo/clip.wav", HTTP_RANGE="bytes=-10").content == body[-10:]
    assert client.get("/demo/clip.wav", HTTP_RANGE=f"bytes={len(body)}-").status_code == 416
    assert client.get("/demo/clip.wav", HTTP_RANGE="bytes=x-y").status_code == 200  # ignored


def test_off_in_production_by_default(client: Client, settings: Any) -> None:
    settings.DEMO_ENABLED = False
    assert client.get("/demo/").status_code == 404
    assert client.get("/demo/clip.wav").status_code == 404


def _watch_time_and_startup(log: list[dict[str, Any]]) -> tuple[int, int, int]:
    """API.md's definitions from the player's own events: time in playing or rebuffering between a
    view's events, and view_start to the first playing; and how far ingest's clock correction may
    move them.

    Ingest stores ``receivedAt - (sentAt - timestamp)``: each batch's events move by that batch's
    ``receivedAt - sentAt``, between 0 and the time its answer took (``answeredAt - sentAt``, the
    same clock). An interval between events of one batch is exact; one between two batches may
    change by at most the larger of their two delays.
    """
    delay: dict[int, int] = {}
    batch: dict[str, int] = {}
    for index, entry in enumerate(log):
        for event in entry["events"]:
            batch.setdefault(event["eventId"], index)
        delay[index] = entry["answeredAt"] - entry["sentAt"] + 1  # +1: sentAt is to the millisecond
    ordered = sorted({e["eventId"]: e for entry in log for e in entry["events"]}.values(), key=lambda e: e["timestamp"])

    def slack(a: dict[str, Any], b: dict[str, Any]) -> int:
        first, second = batch[a["eventId"]], batch[b["eventId"]]
        return 0 if first == second else max(delay[first], delay[second])

    state = None
    watched = bound = 0
    for event, following in itertools.pairwise(ordered):
        kind = event["type"]
        if kind in ("playing", "rebuffer_end"):
            state = "playing"
        elif kind == "rebuffer_start":
            state = "rebuffering"
        elif kind in ("pause", "seek", "ended", "view_end", "view_start"):
            state = kind
        if state in ("playing", "rebuffering"):
            watched += following["timestamp"] - event["timestamp"]
            bound += slack(event, following)
    start = next(e for e in ordered if e["type"] == "view_start")
    first_playing = next(e for e in ordered if e["type"] == "playing")
    startup = first_playing["timestamp"] - start["timestamp"]
    return watched, startup, max(bound, slack(start, first_playing))


def _json(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (make chromium)")
def test_a_view_played_on_the_demo_page_reaches_get_metrics(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ports = {name: free_port() for name in ("web", "kafka", "clickhouse", "streams_metrics")}
    base = f"http://127.0.0.1:{ports['web']}"
    output: list[str] = []
    process = _start(tmp_path / "var", ports, output)
    try:
        _wait_ready(base, process, output)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
            )
            try:
                page = browser.new_page()
                outside: list[str] = []
                page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
                page.goto(f"{base}/demo/")
                video = "document.getElementById('demo-video')"
                page.wait_for_function(f"window.demoReady === true && {video}.readyState >= 1")
                page.evaluate(f"{video}.play()")
                page.wait_for_function(f"{video}.currentTime > 1.5")
                page.evaluate(f"{video}.pause()")
                page.wait_for_timeout(700)
                page.evaluate(f"{video}.play()")
                page.wait_for_function(f"{video}.currentTime > 2.5")
                page.evaluate(f"{video}.currentTime = {CLIP_SECONDS - 2}")  # a seek while playing
                page.wait_for_function(f"{video}.ended", timeout=20_000)
                page.wait_for_function(
                    "window.demoTracker.pending() === 0 && window.demoLog.every(e => e.status !== null)"
                )
                page.wait_for_function("document.getElementById('events-sent').textContent !== '0'")
                page.screenshot(path=str(Path("artifacts") / "demo-player.png"))
                log = page.evaluate("window.demoLog")
            finally:
                browser.close()
        assert outside == [], outside
        assert {entry["status"] for entry in log} == {202}, log
        # Posted with the demo write key the local stack made for the page's origin.
        assert all("?writeKey=wk_" in entry["url"] for entry in log), log[0]["url"]
        events = {e["eventId"]: e for entry in log for e in entry["events"]}
        kinds = [e["type"] for e in sorted(events.values(), key=lambda e: e["timestamp"]) if e["type"] != "heartbeat"]
        assert kinds == ["view_start", "playing", "pause", "playing", "seek", "playing", "ended"], kinds
        watched, startup, bound = _watch_time_and_startup(log)

        token = _json(f"{base}/auth/token", {"username": "ops", "password": "a-long-test-password"})["access"]
        query = urllib.parse.urlencode(
            [
                ("metric", "views"),
                ("metric", "events"),
                ("metric", "watch_time_ms"),
                ("metric", "video_startup_time_ms_p50"),
                ("metric", "playback_success_score"),
                ("metric", "startup_time_score"),
                ("metric", "smoothness_score"),
                ("metric", "viewer_experience_score"),
                ("filter", f"videoId:{DEMO_VIDEO_ID}"),
            ]
        )
        deadline = time.monotonic() + 90
        totals: dict[str, Any] = {}
        while time.monotonic() < deadline:
            answer = _json(f"{base}/metrics?{query}", token=token)
            totals = {m["metric"]: (m["series"][0]["total"] if m["series"] else None) for m in answer["metrics"]}
            if totals["views"] == 1 and totals["events"] == len(events) and totals["watch_time_ms"]:
                break
            time.sleep(1)
        assert (totals["views"], totals["events"]) == (1, len(events)), totals
        # Exactly the player's timeline, up to what the per-batch clock correction may move (a few ms).
        assert abs(totals["watch_time_ms"] - watched) <= bound, (totals, watched, bound)
        assert abs(totals["video_startup_time_ms_p50"] - startup) <= bound, (totals, startup, bound)
        # The scores of README "QoE scores" for this one view: no error, no rebuffer.
        startup_score = 100 * 8 / (8 + startup / 1000)
        assert totals["playback_success_score"] == 100
        assert totals["smoothness_score"] == 100
        # d(score)/d(startup) is at most 100 * 8 / 8**2 per second: 0.0125 per millisecond.
        assert abs(totals["startup_time_score"] - startup_score) <= 0.0125 * bound + 1e-9, (totals, startup)
        assert abs(totals["viewer_experience_score"] - (startup_score + 100) / 2) <= 0.0125 * bound + 1e-9
        assert bound < 1000, bound  # the batches were answered within a second: the check stays tight
    finally:
        _stop(process, output)
