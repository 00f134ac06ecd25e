"""Crash and shutdown: acknowledged inserts survive kill -9; SIGTERM exits 0 and keeps data."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError

from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process

pytestmark = pytest.mark.clickhouse


def _start(base: Path) -> ServerProcess:
    return start_server_process(data_dir=base / "data", log_file=base / "server.log")


def test_acknowledged_inserts_survive_kill_9(tmp_path: Path) -> None:
    server = _start(tmp_path)
    Client(**server.client_kwargs()).execute(
        "CREATE TABLE events (id UInt64, writer UInt8) ENGINE = MergeTree ORDER BY id"
    )
    acknowledged: list[list[int]] = [[], []]
    stop = threading.Event()

    def writer(n: int) -> None:
        client = Client(**server.client_kwargs(), compression="lz4" if n else False)
        batch = 0
        while not stop.is_set():
            ids = [n * 10**9 + batch * 100 + i for i in range(100)]
            try:
                client.execute("INSERT INTO events (id, writer) VALUES", [(i, n) for i in ids])
            except (DriverError, OSError, EOFError):
                return  # the server is gone: this batch was never acknowledged
            acknowledged[n].extend(ids)
            batch += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(30)

    restarted = _start(tmp_path)
    try:
        client = Client(**restarted.client_kwargs())
        acked = {i for ids in acknowledged for i in ids}
        present = {row[0] for row in client.execute("SELECT id FROM events")}
        assert len(acked) > 1000
        assert acked <= present, f"{len(acked - present)} acknowledged rows lost"
        assert len(present) - len(acked) <= 2 * 100  # at most the batch in flight per writer
        client.execute("INSERT INTO events VALUES", [(1, 9)])  # the table is writable again
    finally:
        assert restarted.stop() == 0


def test_sigterm_finishes_running_query_exits_zero_and_keeps_data(tmp_path: Path) -> None:
    server = _start(tmp_path)
    client = Client(**server.client_kwargs())
    client.execute("CREATE TABLE kept (x UInt32) ENGINE = MergeTree ORDER BY x")
    client.execute("INSERT INTO kept VALUES", [(i,) for i in range(1000)])
    idle = Client(**server.client_kwargs())
    idle.execute("SELECT 1")  # an idle open connection must not hold the shutdown
    running: list[object] = []
    query = threading.Thread(target=lambda: running.append(client.execute("SELECT sleep(1.5), count() FROM kept")))
    query.start()
    time.sleep(0.5)

    started = time.monotonic()
    exit_code = server.stop(timeout=20)
    query.join(5)

    assert exit_code == 0
    assert time.monotonic() - started < 10
    assert running == [[(0, 1000)]]  # the in-flight query completed within the grace period
    restarted = _start(tmp_path)
    try:
        assert Client(**restarted.client_kwargs()).execute("SELECT count(), sum(x) FROM kept") == [(1000, 499500)]
    finally:
        assert restarted.stop() == 0
