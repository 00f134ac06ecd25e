"""Static files as deployed: ``collectstatic`` output served by WhiteNoise inside a real gunicorn.

The admin's stylesheet and plotly.js are fetched over HTTP the way a browser does: from the name
the page links to (content-hashed, cached for a year), compressed when the client asks for it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
from django.conf import settings

from analytics_platform.devstack import processes

pytestmark = [pytest.mark.slow]  # one collectstatic per run (shared through collected_static)


@pytest.fixture(scope="module")
def server(collected_static: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    var = tmp_path_factory.mktemp("static-web-var")
    port = processes.free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(settings.BASE_DIR),
        "ANALYTICS_VAR_DIR": str(var),
        "DJANGO_STATIC_ROOT": str(collected_static),
        # No Django tables in this throwaway var dir: no allowlist rules to read.
        "INGEST_ALLOWLIST_ENABLED": "false",
        "ADMIN_ALLOWLIST_ENABLED": "false",
        "API_ALLOWLIST_ENABLED": "false",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "4",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
        ],
        env=env,
        cwd=settings.BASE_DIR,
    )
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=process)
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _assert_hashed_and_compressed(port: int, url: str, content_type: str) -> bytes:
    name_hash = re.search(r"\.([0-9a-f]{12})\.[a-z]+$", url)
    assert name_hash, f"{url} is not a content-hashed name"
    status, headers, plain = get(port, url, Accept_Encoding="identity")
    assert status == 200, url
    assert headers["content-type"].startswith(content_type)
    assert "content-encoding" not in headers
    # The name is the content's hash (ManifestStaticFilesStorage), so a year of caching is safe.
    assert hashlib.md5(plain, usedforsecurity=False).hexdigest()[:12] == name_hash.group(1)
    assert "max-age=315360000" in headers["cache-control"] and "immutable" in headers["cache-control"]
    assert headers["vary"].lower() == "accept-encoding"

    status, headers, body = get(port, url, Accept_Encoding="gzip")
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert gzip.decompress(body) == plain and len(body) < len(plain)
    status, headers, body = get(port, url, Accept_Encoding="gzip, deflate, br")
    assert (status, headers["content-encoding"]) == (200, "br")
    assert brotli.decompress(body) == plain and len(body) < len(plain)
    return plain


def test_the_admin_stylesheet_is_served_hashed_and_compressed(server: int) -> None:
    status, _, page = get(server, "/admin/login/")
    assert status == 200
    [css] = re.findall(rb'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page)
    plain = _assert_hashed_and_compressed(server, css.decode(), "text/css")
    assert b"--body-bg" in plain  # the admin's own stylesheet, not an error page

    # The unhashed name still answers (bookmarks, third-party references), with a short cache;
    # its url(...) references are the plain names, rewritten to hashed ones in the hashed copy.
    status, headers, body = get(server, "/static/admin/css/base.css")
    assert status == 200 and b"--body-bg" in body
    assert "immutable" not in headers["cache-control"]

    status, _, _ = get(server, "/static/admin/css/no-such-file.css")
    assert status == 404
    status, _, _ = get(server, "/static/../analytics_platform/settings.py")
    assert status == 404


def test_plotly_comes_from_the_same_pipeline(server: int, collected_static: Path) -> None:
    manifest: dict[str, Any] = json.loads((collected_static / "staticfiles.json").read_text())
    hashed: str = manifest["paths"]["plotly/plotly.min.js"]
    plain = _assert_hashed_and_compressed(server, f"/static/{hashed}", "text/javascript")
    wheel = Path(str(__import__("plotly").__file__)).parent / "package_data" / "plotly.min.js"
    assert plain == wheel.read_bytes()
    # Only plotly.min.js is exposed from the wheel, not its data sets or widget bundle.
    names = {p.name for p in (collected_static / "plotly").iterdir() if not p.name.endswith((".gz", ".br"))}
    assert names == {"plotly.min.js", Path(hashed).name}
