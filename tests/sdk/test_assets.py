"""``GET /sdk/player.js``: the SDK's own bytes, a JavaScript content type, cache and CORS headers."""

from __future__ import annotations

from typing import Any

import pytest

from analytics_platform import sdk_assets


@pytest.mark.parametrize("name", ["player.js", "player.mjs"])
def test_served_as_written_with_script_headers(client: Any, name: str) -> None:
    response = client.get(f"/sdk/{name}")
    assert response.status_code == 200
    assert response.content == (sdk_assets.sdk_dir() / name).read_bytes()
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert response["Cache-Control"] == sdk_assets.CACHE_PLAIN
    assert response["Access-Control-Allow-Origin"] == "*"
    assert response["Cross-Origin-Resource-Policy"] == "cross-origin"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "Accept-Encoding" in response["Vary"]
    assert not response.cookies


def test_versioned_url_is_immutable_and_etag_revalidates(client: Any) -> None:
    first = client.get("/sdk/player.js")
    etag = first["ETag"]
    version = etag.strip('"')
    assert len(version) == 16
    versioned = client.get(f"/sdk/player.js?v={version}")
    assert versioned["Cache-Control"] == "public, max-age=31536000, immutable"
    # Another version's URL (an old page after a release) is not pinned for a year to these bytes.
    assert client.get("/sdk/player.js?v=0000000000000000")["Cache-Control"] == sdk_assets.CACHE_PLAIN
    again = client.get("/sdk/player.js", HTTP_IF_NONE_MATCH=f'"other", W/{etag}')
    assert again.status_code == 304
    assert again.content == b""
    assert again["ETag"] == etag
    assert client.get("/sdk/player.js", HTTP_IF_NONE_MATCH='"other"').status_code == 200


def test_head_and_methods(client: Any) -> None:
    head = client.head("/sdk/player.js")
    assert head.status_code == 200
    assert head.content == b""
    assert client.post("/sdk/player.js").status_code == 405


@pytest.mark.parametrize(
    "path", ["/sdk/package.json", "/sdk/test", "/sdk/..%2Fpyproject.toml", "/sdk/../manage.py", "/sdk/player.js/x"]
)
def test_only_the_sdk_files(client: Any, path: str) -> None:
    assert client.get(path).status_code == 404
