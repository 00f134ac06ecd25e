"""The server's command line, run as the devstack and the image run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "analytics_platform.clickhouse_server", "--data-dir", str(tmp_path / "ch"), *args]
    return subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=60, env=env or {"PATH": "/usr/bin:/bin"}
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "clickhouse.internal"])
def test_a_server_reachable_from_other_machines_refuses_to_start_without_a_password(tmp_path: Path, host: str) -> None:
    result = _serve(tmp_path, "--host", host, "--port", "0")
    assert result.returncode == 2
    assert "a password is required" in result.stderr
    assert not (tmp_path / "ch").exists()  # refused before touching the data directory


def test_the_password_check_sees_the_environment(tmp_path: Path) -> None:
    # With a password from the environment the refusal does not apply: the server gets as far as
    # its bad port (the refusal would have answered 2 before binding).
    result = _serve(
        tmp_path,
        "--host",
        "0.0.0.0",
        "--port",
        "-1",
        env={"PATH": "/usr/bin:/bin", "CLICKHOUSE_SERVER_PASSWORD": "s3cret-pw"},
    )
    assert "a password is required" not in result.stderr
    assert "port must be 0-65535" in result.stderr


def test_a_loopback_server_also_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    # Any local process or user could otherwise read and drop every table.
    result = _serve(tmp_path, "--host", "127.0.0.1", "--port", "0")
    assert result.returncode == 2
    assert "a password is required" in result.stderr and "--insecure-no-password" in result.stderr
    assert not (tmp_path / "ch").exists()


def test_insecure_no_password_is_for_loopback_only(tmp_path: Path) -> None:
    refused = _serve(tmp_path, "--host", "0.0.0.0", "--port", "0", "--insecure-no-password")
    assert refused.returncode == 2 and "a password is required" in refused.stderr
    # On loopback the flag lifts the refusal: the server gets as far as its bad port.
    allowed = _serve(tmp_path, "--host", "127.0.0.1", "--port", "-1", "--insecure-no-password")
    assert "a password is required" not in allowed.stderr
    assert "port must be 0-65535" in allowed.stderr
    both = _serve(
        tmp_path,
        "--port",
        "0",
        "--insecure-no-password",
        env={"PATH": "/usr/bin:/bin", "CLICKHOUSE_SERVER_PASSWORD": "s3cret-pw"},
    )
    assert both.returncode == 2 and "contradicts" in both.stderr
