"""The SDK's own unit tests (``sdk/js/test``, Node's built-in runner), run as part of the suite.

Node.js 20 is on the machine and on CI; the tests need no npm package, so nothing is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from analytics_platform import sdk_assets


def test_node_unit_tests_pass() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the SDK's unit tests need Node.js >= 20")
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/"],
        cwd=sdk_assets.sdk_dir(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    totals = dict(re.findall(r"^\S* ?(tests|pass|fail) (\d+)$", result.stdout, re.MULTILINE))
    assert int(totals["tests"]) >= 30, totals  # a runner that found no test files also exits 0
    assert totals["fail"] == "0"
