"""Server CPU per inserted row, for rows shaped like the stream workers' ``events`` inserts.

Inserts ``--rows`` rows (default 100k) with clickhouse-driver in ``--chunk``-row chunks
(default 20k), columnar and row-wise, with and without LZ4, into a table with the column types
of ``events`` (UUID, LowCardinality(String) x7, String x5, DateTime64(3, 'UTC') x3,
Nullable(Int64) x2, Bool, UInt8/UInt16/UInt64). Building the Python values is outside the
timings. Reports wall time and the server process's CPU time (utime + stime from /proc), and
how long the protocol layer alone takes to walk one client block (``skip_block``, in process).
``--rollups N`` attaches N materialized views like the ``events`` rollups (minute/hour/day...), to
show what chdb's own work adds.

Run: ``PYTHONPATH=. python bench/bench_clickhouse_insert.py [--rows 100000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clickhouse_driver import Client  # noqa: E402

from analytics_platform.clickhouse_server import engine  # noqa: E402
from analytics_platform.clickhouse_server.native import skip_block  # noqa: E402
from analytics_platform.clickhouse_server.protocol import ByteReader  # noqa: E402
from analytics_platform.clickhouse_server.server import ClickHouseServer  # noqa: E402
from analytics_platform.clickhouse_server.testing import start_server_process  # noqa: E402

LC = [f"lc{i}" for i in range(7)]
STR = [f"s{i}" for i in range(5)]
TS = ["ts0", "ts1", "ts2"]
NULLS = ["n0", "n1"]
DDL = (
    "CREATE TABLE bench_events (id UUID, "
    + ", ".join(f"{c} LowCardinality(String)" for c in LC)
    + ", "
    + ", ".join(f"{c} String" for c in STR)
    + ", "
    + ", ".join(f"{c} DateTime64(3, 'UTC')" for c in TS)
    + ", "
    + ", ".join(f"{c} Nullable(Int64)" for c in NULLS)
    + ", flag Bool, o8 UInt8, o16 UInt16, o64 UInt64) ENGINE = MergeTree ORDER BY (lc0, ts0)"
)
COLUMNS = ["id", *LC, *STR, *TS, *NULLS, "flag", "o8", "o16", "o64"]
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def rollup_ddl(index: int) -> list[str]:
    grain = ("Minute", "Hour", "Day", "Week", "Month")[index % 5]
    dims = ", ".join(LC[1:])
    return [
        f"CREATE TABLE bench_rollup_{index} (bucket DateTime('UTC'), lc0 LowCardinality(String), "
        + ", ".join(f"{c} LowCardinality(String)" for c in LC[1:])
        + f", events UInt64, flagged UInt64) ENGINE = SummingMergeTree ORDER BY (bucket, lc0, {dims})",
        f"CREATE MATERIALIZED VIEW bench_rollup_{index}_mv TO bench_rollup_{index} AS SELECT"
        f" toDateTime(toStartOf{grain}(ts0), 'UTC') AS bucket, lc0, {dims}, count() AS events,"
        f" countIf(flag) AS flagged FROM bench_events GROUP BY bucket, lc0, {dims}",
    ]


def walk_seconds(rows: list[list[Any]]) -> tuple[float, int]:
    """Seconds ``skip_block`` takes for one block as clickhouse-driver sends it, and its size."""
    blocks: list[bytes] = []
    original = engine.Insert.append

    def capture(self: engine.Insert, native_block: bytes) -> None:
        blocks.append(native_block)
        original(self, native_block)

    # Capture the block bytes from an in-process server, then time the walk alone.
    engine.Insert.append = capture  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-chs-walk-") as tmp:
            server = ClickHouseServer(data_dir=str(Path(tmp) / "data"), port=0)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                client = Client(server.address[0], port=server.address[1])
                client.execute(DDL)
                client.execute(f"INSERT INTO bench_events ({', '.join(COLUMNS)}) VALUES", rows, columnar=True)
                client.disconnect()
            finally:
                server.request_stop()
                thread.join()
    finally:
        engine.Insert.append = original  # type: ignore[method-assign]
    block = blocks[0]
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        skip_block(ByteReader(initial=block))
    return (time.perf_counter() - started) / runs, len(block)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_rows(n: int) -> list[tuple[Any, ...]]:
    rows = []
    for i in range(n):
        ts = BASE + dt.timedelta(milliseconds=i * 37)
        rows.append(
            (
                uuid.UUID(int=i * 7919 + 1),
                *(f"{name}-{i % (3 + k * 4)}" for k, name in enumerate(LC)),
                f"user-{i % 5000}",
                f"session-{i // 20}",
                f"https://example.com/videos/{i % 997}?t={i}",
                "" if i % 3 else f"referrer-{i % 31}",
                "x" * (i % 50),
                ts,
                ts + dt.timedelta(seconds=5),
                ts + dt.timedelta(seconds=9),
                None if i % 4 == 0 else i * 1000,
                None if i % 2 else -i,
                bool(i % 2),
                i % 256,
                i % 65536,
                i,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rollups", type=int, default=0, help="materialized views on the table")
    args = parser.parse_args()

    rows = make_rows(args.rows)
    columns = [list(col) for col in zip(*rows, strict=True)]
    walk, size = walk_seconds([col[: args.chunk] for col in columns])
    print(
        f"protocol layer: skip_block of one {args.chunk}-row block ({size / 1e6:.1f} MB) takes"
        f" {walk * 1e3:.1f} ms = {walk / args.chunk * 1e6:.2f} µs/row"
    )
    insert = f"INSERT INTO bench_events ({', '.join(COLUMNS)}) VALUES"
    with (
        tempfile.TemporaryDirectory(prefix="bench-chs-insert-") as tmp,
        start_server_process(data_dir=Path(tmp) / "data", log_level="WARNING") as server,
    ):
        setup = Client(**server.client_kwargs())
        setup.execute(DDL)
        for index in range(args.rollups):
            for statement in rollup_ddl(index):
                setup.execute(statement)
        print(
            f"{args.rows} rows in {args.chunk}-row chunks, {args.rollups} rollup views,"
            f" median of {args.repeat} by server CPU; server pid {server.pid}"
        )
        print(f"{'mode':<24} {'wall s':>8} {'server CPU s':>13} {'server µs/row':>14}")
        for label, columnar, compression in (
            ("columnar", True, False),
            ("columnar lz4", True, True),
            ("row-wise", False, False),
            ("row-wise lz4", False, True),
        ):
            client = Client(**server.client_kwargs(), compression="lz4" if compression else False)
            runs: list[tuple[float, float]] = []
            for _ in range(args.repeat):
                setup.execute("TRUNCATE TABLE bench_events")
                for index in range(args.rollups):
                    setup.execute(f"TRUNCATE TABLE bench_rollup_{index}")
                cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
                for start in range(0, args.rows, args.chunk):
                    if columnar:
                        data: Any = [col[start : start + args.chunk] for col in columns]
                    else:
                        data = rows[start : start + args.chunk]
                    client.execute(insert, data, columnar=columnar)
                wall, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
                runs.append((wall, cpu))
            count = setup.execute("SELECT count() FROM bench_events")[0][0]
            assert count == args.rows, count
            client.disconnect()
            wall, cpu = sorted(runs, key=lambda run: run[1])[len(runs) // 2]
            print(f"{label:<24} {wall:8.2f} {cpu:13.2f} {cpu / args.rows * 1e6:14.1f}")


if __name__ == "__main__":
    main()
