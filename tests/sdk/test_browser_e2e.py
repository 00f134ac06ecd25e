"""The SDK in headless Chromium against a real web process and a real broker.

A page on the web process's origin (the HTML is the test's, handed to the browser by Playwright's
router; ``/sdk/player.mjs``, ``/sdk/player.js`` and ``POST /events`` are the real server's) plays a
real ``<video>``: a tiny WAV generated here, which Chromium plays headless without codecs or a
GPU (a video track needs an encoder this machine lacks). The broker is not up when playback
starts, so ingest answers 503 with Retry-After; the SDK waits, then re-sends the same eventIds,
and once the broker is up every event reaches the topic with 202, in the player's order.
"""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from django.conf import settings as django_settings

from analytics_platform import kafka
from analytics_platform.devstack import processes
from tests.ingest.conftest import TopicReader

pytestmark = [pytest.mark.browser, pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CLIP_SECONDS = 3
PAGE_PATH = "/e2e/sdk-player-test"


def wav_clip(seconds: int) -> bytes:
    """A mono 8 kHz 8-bit tone: 8 kB a second, seekable exactly, played by every Chromium build."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(bytes(128 + int(40 * math.sin(i / 5)) for i in range(8000 * seconds)))
    return buf.getvalue()


def page_html(user_id: str, video_id: str) -> str:
    clip = base64.b64encode(wav_clip(CLIP_SECONDS)).decode()
    return f"""<!doctype html>
<meta charset="utf-8"><title>SDK e2e</title>
<video id="v" muted playsinline preload="auto" src="data:audio/wav;base64,{clip}"></video>
<script>
  // Records what the SDK sent and what ingest answered, wrapping the browser's real fetch.
  window.sent = [];
  window.media = [];
  const realFetch = window.fetch.bind(window);
  window.fetch = async (url, init) => {{
    const record = {{ t: performance.now(), body: JSON.parse(init.body), keepalive: !!init.keepalive }};
    window.sent.push(record);
    try {{
      const response = await realFetch(url, init);
      record.status = response.status;
      record.retryAfter = response.headers.get("Retry-After");
      record.answer = await response.clone().json();
      record.done = performance.now();
      return response;
    }} catch (e) {{ record.status = 0; record.done = performance.now(); throw e; }}
  }};
  const v = document.getElementById("v");
  for (const k of ["play", "playing", "pause", "seeking", "seeked", "waiting", "ended"])
    v.addEventListener(k, () => window.media.push([k, Math.round(v.currentTime * 1000)]));
</script>
<script type="module">
  import {{ createTracker }} from "/sdk/player.mjs";
  window.tracker = createTracker({{
    endpoint: "/events", userId: "{user_id}", flushMs: 200, batchSize: 20, retryBaseMs: 300,
    dimensions: {{ device: "desktop", country: "FR" }},
  }});
  window.tracker.attach(document.getElementById("v"), {{ videoId: "{video_id}" }});
  window.ready = true;
</script>
"""


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A gunicorn web process whose broker address has nothing listening yet."""
    broker_port = processes.free_port()
    var = tmp_path / "var"
    (var / "prometheus").mkdir(parents=True)
    port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(django_settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(var / "prometheus"),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
        "INGEST_ALLOWLIST_ENABLED": "false",  # access control is not what this test is about
        "INGEST_ACK_TIMEOUT_SECONDS": "1",
        "INGEST_RETRY_AFTER_SECONDS": "2",
        "WEB_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
        ],
        env=env,
        cwd=django_settings.BASE_DIR,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=process)
        yield f"http://127.0.0.1:{port}", broker_port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


@pytest.fixture
def late_broker(web: tuple[str, int]) -> Iterator[list[processes.ManagedProcess]]:
    """The web process's broker, once the test starts it (stopped at teardown, whatever happened)."""
    started: list[processes.ManagedProcess] = []
    yield started
    for broker in started:
        broker.stop()


def _wait(page: Any, expression: str, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(expression, timeout=timeout_ms)


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed (make chromium)")
def test_sdk_plays_pauses_seeks_ends_and_retries_a_503_with_the_same_ids(
    web: tuple[str, int], late_broker: list[processes.ManagedProcess], settings: Any
) -> None:
    from playwright.sync_api import sync_playwright

    origin, broker_port = web
    user_id = f"e2e-{uuid.uuid4().hex[:12]}"
    video_id = f"clip-{uuid.uuid4().hex[:8]}"
    html = page_html(user_id, video_id)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            page = browser.new_page()
            page.route(
                f"{origin}{PAGE_PATH}", lambda route: route.fulfill(status=200, content_type="text/html", body=html)
            )
            scripts: list[Any] = []
            page.on("response", lambda r: scripts.append(r) if "/sdk/" in r.url else None)
            page.goto(f"{origin}{PAGE_PATH}")
            _wait(page, "window.ready === true && document.getElementById('v').readyState >= 1")
            assert {r.url.rsplit("/", 1)[1] for r in scripts if r.status == 200} == {"player.mjs", "player.js"}
            for response in scripts:
                assert response.headers["content-type"] == "text/javascript; charset=utf-8"

            # Play, then pause at once: no broker yet, so the first batch is refused with 503.
            page.evaluate("document.getElementById('v').play()")
            _wait(page, "window.media.some(m => m[0] === 'playing')")
            page.evaluate("document.getElementById('v').pause()")
            _wait(page, "window.sent.some(r => r.status === 503)")

            late_broker.append(processes.broker_start(port=broker_port))
            settings.KAFKA_BOOTSTRAP_SERVERS = late_broker[0].address
            kafka.topics_ensure()
            _wait(page, "window.sent.some(r => r.status === 202)", timeout_ms=60_000)

            # Seek to 2 s, play to the end.
            page.evaluate("document.getElementById('v').currentTime = 2")
            _wait(page, "window.media.some(m => m[0] === 'seeked')")
            page.evaluate("document.getElementById('v').play()")
            _wait(page, "window.media.some(m => m[0] === 'ended')")
            _wait(page, "window.tracker.pending() === 0 && window.sent.every(r => r.status !== undefined)")
            sent = page.evaluate("window.sent")
            media = page.evaluate("window.media")

            # The classic script form defines window.VideoAnalytics on its own too.
            classic = browser.new_page()
            classic.route(
                f"{origin}/e2e/blank",
                lambda route: route.fulfill(status=200, content_type="text/html", body="<!doctype html>"),
            )
            classic.goto(f"{origin}/e2e/blank")
            classic.add_script_tag(url="/sdk/player.js")
            assert classic.evaluate("typeof VideoAnalytics.createTracker") == "function"
        finally:
            browser.close()

    # --- what was sent, and what ingest answered ---------------------------------------------
    first = sent[0]
    assert first["status"] == 503, sent
    assert first["retryAfter"] == "2"
    first_ids = [e["eventId"] for e in first["body"]["events"]]
    assert [e["type"] for e in first["body"]["events"]][:2] == ["view_start", "playing"]
    retries = [r for r in sent[1:] if {e["eventId"] for e in r["body"]["events"]} & set(first_ids)]
    assert retries, "the 503'd events were never sent again"
    for retry in retries:
        # The same events, first in the batch (more may have joined them), with a new sentAt.
        assert [e["eventId"] for e in retry["body"]["events"]][: len(first_ids)] == first_ids
        assert retry["body"]["events"][: len(first_ids)] == first["body"]["events"]
        assert retry["body"]["sentAt"] > first["body"]["sentAt"]
    assert retries[0]["t"] - first["done"] >= 2000 * 0.99, "Retry-After was not honoured"
    assert sent[-1]["status"] == 202
    assert all(r["status"] in (202, 503) for r in sent), [r["status"] for r in sent]
    accepted = [r for r in sent if r["status"] == 202]
    assert all(r["answer"]["rejected"] == 0 for r in accepted), [r["answer"] for r in accepted]
    assert not any(r["keepalive"] for r in sent)

    # The player's own timeline, and the SDK's events in the same order.
    assert [m[0] for m in media if m[0] != "waiting"] == [
        "play",
        "playing",
        "pause",
        "seeking",
        "seeked",
        "play",
        "playing",
        "pause",
        "ended",
    ]
    events: dict[str, dict] = {}
    for request in accepted:
        for event in request["body"]["events"]:
            events.setdefault(event["eventId"], event)
    ordered = sorted(events.values(), key=lambda e: e["timestamp"])
    types = [e["type"] for e in ordered if e["type"] != "heartbeat"]
    assert types == ["view_start", "playing", "pause", "seek", "playing", "ended"]
    by_type = {e["type"]: e for e in ordered}
    assert by_type["seek"]["positionMs"] == 2000
    assert by_type["ended"]["positionMs"] == CLIP_SECONDS * 1000
    assert by_type["view_start"]["properties"]["durationMs"] == CLIP_SECONDS * 1000
    assert len({e["sessionId"] for e in ordered}) == 1
    for event in ordered:
        assert (event["userId"], event["videoId"], event["device"], event["country"]) == (
            user_id,
            video_id,
            "desktop",
            "FR",
        )

    # --- what reached the topic -----------------------------------------------------------------
    reader = TopicReader()
    try:
        deadline = time.monotonic() + 20
        stored: list[dict] = []
        while time.monotonic() < deadline and not set(events) <= {e["eventId"] for e in stored}:
            messages = reader.messages_for({user_id}, expected=1, settle=0.5, timeout=5)
            stored += [e for m in messages for e in msgspec.json.decode(m.value())["events"] if e["userId"] == user_id]
    finally:
        reader.close()
    assert set(events) <= {e["eventId"] for e in stored}
    firsts: dict[str, dict] = {}
    for event in stored:  # a 503'd request may also have reached the broker later: first copies
        firsts.setdefault(event["eventId"], event)
    in_topic = [e["type"] for e in firsts.values() if e["type"] != "heartbeat"]
    assert in_topic == types, "the topic holds the user's events in the player's order"
