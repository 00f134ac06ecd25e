"""``/demo/``: a page that plays a local clip through the player SDK, so that a newcomer sees data
reach the dashboards a minute after ``make run``, with nothing to set up.

The clip is made here, not downloaded or committed: a WAV soundtrack (8 kHz, 8-bit, mono: 8 kB a
second, seekable to the sample) that every Chromium build plays in a ``<video>`` element without
codecs or a GPU, with the picture drawn by the page on a canvas from the element's ``currentTime``.
Debian's Chromium has no encoder for a real video track (MediaRecorder would need one, and real
time), and ffmpeg is not part of ``make run``. The player events are the SDK's, from the element,
exactly as on a real video.

On by default locally, off in production (``DEMO_ENABLED``): it is a page anyone can load that posts
events as an anonymous viewer. The page posts with the local stack's demo write key (made by
``manage.py devstack`` for the page's own origins), as a site embedding the SDK would.
"""

from __future__ import annotations

import io
import math
import re
import wave
from functools import lru_cache

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

CLIP_SECONDS = 30
_RANGE = re.compile(r"bytes=(\d{0,12})-(\d{0,12})")
CLIP_RATE = 8000
DEMO_VIDEO_ID = "demo-test-card"
DEMO_KEY_NAME = "demo page (created by manage.py devstack)"


def demo_write_key_ensure(*, port: int) -> str:
    """The demo page's write key for the local stack's origins, made once and kept (not revoked)."""
    from ingest.models import WriteKey

    origins = f"http://127.0.0.1:{port}\nhttp://localhost:{port}"
    key = WriteKey.objects.filter(name=DEMO_KEY_NAME, revoked_at__isnull=True).first()
    if key is None:
        key = WriteKey.objects.create(name=DEMO_KEY_NAME, allowed_origins=origins, rate_limit_requests=100)
    elif key.allowed_origins != origins:  # started on another PORT
        key.allowed_origins = origins
        key.save(update_fields=["allowed_origins", "updated_at"])
    return key.key


def _demo_write_key() -> str:
    from ingest.models import WriteKey

    key = WriteKey.objects.filter(name=DEMO_KEY_NAME, revoked_at__isnull=True).values_list("key", flat=True).first()
    return key or ""


@lru_cache(maxsize=4)
def wav_clip(seconds: int = CLIP_SECONDS) -> bytes:
    """A tone whose pitch steps up every second (so a seek is audible), as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(CLIP_RATE)
        frames = bytearray(CLIP_RATE * seconds)
        for second in range(seconds):
            step = 2 * math.pi * (220 + 20 * (second % 12)) / CLIP_RATE
            base = second * CLIP_RATE
            for i in range(CLIP_RATE):
                frames[base + i] = 128 + int(24 * math.sin(step * i))
        out.writeframes(bytes(frames))
    return buf.getvalue()


def _enabled() -> None:
    if not settings.DEMO_ENABLED:
        raise Http404("the demo is off (DEMO_ENABLED)")


@require_safe
def demo_page(request: HttpRequest) -> HttpResponse:
    _enabled()
    return render(
        request,
        "demo/index.html",
        {"video_id": DEMO_VIDEO_ID, "clip_seconds": CLIP_SECONDS, "write_key": _demo_write_key()},
    )


@require_safe
def demo_clip(request: HttpRequest) -> HttpResponse:
    _enabled()
    data = wav_clip()
    # Chromium seeks a media file only when the server answers ranges. One range is served; any
    # other form of the header is ignored (RFC 9110 allows answering the whole file).
    start, end, status = 0, len(data) - 1, 200
    match = _RANGE.fullmatch(request.headers.get("Range", ""))
    if match and (match[1] or match[2]):
        if match[1]:
            start = int(match[1])
            end = min(int(match[2]), end) if match[2] else end
        else:
            start = max(0, len(data) - int(match[2]))
        if start > end:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{len(data)}"
            return response
        status = 206
    response = HttpResponse(data[start : end + 1], status=status, content_type="audio/wav")
    response["Accept-Ranges"] = "bytes"
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    response["Cache-Control"] = "public, max-age=86400"
    return response
