"""``GET /sdk/player.js`` (and ``player.mjs``): the player SDK's files from ``sdk/js``, as written.

A dedicated view rather than the static-files machinery: two files, served from any web process
with no ``collectstatic`` step, a stable public URL, and the headers a script embedded by other
sites needs (CORS for ``<script type="module">``, a cross-origin resource policy). Caching: the
plain URL may change with a release, so browsers keep it a day and revalidate with its ETag;
``?v=<etag>`` names one exact version, cached for a year as immutable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotModified
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_safe

SDK_FILES = frozenset({"player.js", "player.mjs"})
CONTENT_TYPE = "text/javascript; charset=utf-8"  # RFC 9239
CACHE_PLAIN = "public, max-age=86400, stale-while-revalidate=604800"
CACHE_VERSIONED = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class SdkAsset:
    content: bytes
    version: str  # the first 16 hex digits of the content's SHA-256


def sdk_dir() -> Path:
    return Path(settings.BASE_DIR) / "sdk" / "js"


@lru_cache(maxsize=len(SDK_FILES))
def _asset_read(name: str) -> SdkAsset:
    content = (sdk_dir() / name).read_bytes()
    return SdkAsset(content, hashlib.sha256(content).hexdigest()[:16])


def sdk_asset_get(*, name: str) -> SdkAsset:
    """The file ``name`` of the SDK (read once per process; again on each call under DEBUG)."""
    if name not in SDK_FILES:
        raise Http404("no such SDK file")
    if settings.DEBUG:
        _asset_read.cache_clear()
    return _asset_read(name)


@require_safe
def sdk_file(request: HttpRequest, name: str) -> HttpResponse:
    asset = sdk_asset_get(name=name)
    etag = f'"{asset.version}"'
    response: HttpResponse
    if etag in {tag.strip().removeprefix("W/") for tag in request.headers.get("If-None-Match", "").split(",")}:
        response = HttpResponseNotModified()
    else:
        response = HttpResponse(asset.content, content_type=CONTENT_TYPE)
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_VERSIONED if request.GET.get("v") == asset.version else CACHE_PLAIN
    # Public code, no credentials: any page may load it, as a module script too.
    response["Access-Control-Allow-Origin"] = "*"
    response["Cross-Origin-Resource-Policy"] = "cross-origin"
    patch_vary_headers(response, ["Accept-Encoding"])
    return response
