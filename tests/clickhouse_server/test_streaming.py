"""A large SELECT streams: the server's memory does not grow with the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics_platform.clickhouse_server.testing import ServerProcess

from .conftest import ClientFactory

pytestmark = pytest.mark.clickhouse

ROWS = 10_000_000


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@pytest.mark.parametrize("compression", [False, "lz4"])
def test_ten_million_rows_stream_in_bounded_memory(
    clickhouse_server: ServerProcess, make_client: ClientFactory, compression: bool | str
) -> None:
    client = make_client(compression=compression)
    client.execute("SELECT 1")
    before = rss_mb(clickhouse_server.pid)
    peak = before
    count = 0
    payload_bytes = 0

    for number, text in client.execute_iter(f"SELECT number, toString(number) FROM numbers({ROWS})"):
        if number != count:
            raise AssertionError(f"row {count} came back as {number}")
        count += 1
        payload_bytes += 8 + len(text) + 1
        if count % 250_000 == 0:
            peak = max(peak, rss_mb(clickhouse_server.pid))

    assert count == ROWS
    assert payload_bytes > 150 * 2**20  # the result is ~160 MB in Native form
    assert peak - before < 300, f"server RSS grew from {before:.0f} MB to {peak:.0f} MB"
    print(f"server RSS {before:.0f} MB before, {peak:.0f} MB peak while streaming {payload_bytes / 2**20:.0f} MB")
