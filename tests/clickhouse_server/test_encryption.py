"""Data at rest: a data dir started with ``$CLICKHOUSE_SERVER_ENCRYPTION_KEY`` holds no plaintext.

Real server processes. The control (the same rows without a key) shows that the marker string
is findable in the files when it is not encrypted, so the check on the encrypted dir can fail.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client

from analytics_platform.clickhouse_server.encryption import KEY_ENV
from analytics_platform.clickhouse_server.testing import start_server_process

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
MARKER = "PLAINTEXT-MARKER-7f3a9c"
PASSWORD = "enc-test-password"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and needle in path.read_bytes()]


def _write_rows(data_dir: Path) -> None:
    with start_server_process(data_dir=data_dir, password=PASSWORD) as server:
        client = Client(**server.client_kwargs())
        client.execute("CREATE TABLE secrets (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
        client.execute("CREATE TABLE counts (s String, n UInt64) ENGINE = SummingMergeTree ORDER BY s")
        client.execute(
            "CREATE MATERIALIZED VIEW secrets_mv TO counts AS SELECT s, count() AS n FROM secrets GROUP BY s"
        )
        client.execute("INSERT INTO secrets VALUES", [(i, MARKER) for i in range(100)])
        assert client.execute("SELECT sum(n) FROM counts WHERE s = %(s)s", {"s": MARKER}) == [(100,)]
        server.stop()


def _serve(data_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "analytics_platform.clickhouse_server",
        "--data-dir",
        str(data_dir),
        "--port",
        "-1",
    ]
    base = {"PATH": "/usr/bin:/bin", "CLICKHOUSE_SERVER_PASSWORD": PASSWORD}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=base | env)


@pytest.fixture
def encryption_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, KEY)  # start_server_process hands its environment to the server
    yield KEY


def test_without_a_key_the_rows_are_in_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    _write_rows(tmp_path / "plain")
    assert _files_containing(tmp_path / "plain", MARKER.encode())


def test_with_a_key_no_file_holds_the_rows_and_they_read_back(tmp_path: Path, encryption_key: str) -> None:
    data_dir = tmp_path / "enc"
    _write_rows(data_dir)
    assert (data_dir / "ENCRYPTED").exists()
    assert not _files_containing(data_dir, MARKER.encode())
    parts = [path for path in (data_dir / "encrypted").rglob("data.bin")]
    assert parts and all(path.read_bytes()[:3] == b"ENC" for path in parts)  # ClickHouse's encrypted header
    with start_server_process(data_dir=data_dir, password=PASSWORD) as server:  # restarted with the key
        client = Client(**server.client_kwargs())
        assert client.execute("SELECT count(), any(s) FROM secrets") == [(100, MARKER)]
        assert client.execute("SELECT sum(n) FROM counts") == [(100,)]


def test_an_encrypted_dir_refuses_to_start_without_its_key_or_with_another(tmp_path: Path, encryption_key: str) -> None:
    data_dir = tmp_path / "enc"
    _write_rows(data_dir)
    without = _serve(data_dir, {})
    assert without.returncode == 2 and "is encrypted" in without.stderr
    wrong = _serve(data_dir, {KEY_ENV: "ff" * 32})
    assert wrong.returncode != 0 and "DATA_ENCRYPTION_ERROR" in wrong.stderr


def test_a_key_is_refused_on_a_dir_that_holds_plain_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    _write_rows(tmp_path / "plain")
    result = _serve(tmp_path / "plain", {KEY_ENV: KEY})
    assert result.returncode == 2 and "already holds unencrypted data" in result.stderr


@pytest.mark.parametrize("key", ["abc", "zz" * 32, "00" * 16, "00" * 33])
def test_a_malformed_key_is_refused_before_the_data_dir_is_touched(tmp_path: Path, key: str) -> None:
    result = _serve(tmp_path / "ch", {KEY_ENV: key})
    assert result.returncode == 2 and "64 hex digits" in result.stderr
    assert not (tmp_path / "ch").exists()
