"""Embedded ClickHouse server vs chdb called directly, measured in one run on the same machine.

* Inserts: the same rows through the server with clickhouse-driver (row-oriented and columnar,
  with and without LZ4) and into chdb in this process from pandas DataFrames
  (``INSERT ... SELECT * FROM Python(df)``, chdb's fastest in-process path). Building the Python
  rows / DataFrames is outside the timings. The server's own CPU time is reported too.
* Group-by latency: median of N runs of the same aggregation over a few million rows, through the
  server (driver, no compression) and directly.
* Concurrency: 4 client processes inserting and querying for ``CH_CONCURRENCY_SECONDS`` (default
  60; 0 skips it).

Run: ``PYTHONPATH=. python bench/bench_clickhouse_server.py [--rows 1000000] [--runs 15]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import chdb  # noqa: E402
from clickhouse_driver import Client  # noqa: E402

from analytics_platform.clickhouse_server.testing import start_server_process  # noqa: E402

pd: Any = importlib.import_module("pandas")  # untyped here (no pandas-stubs)

COUNTRIES = ["DE", "FR", "US", "GB", "IN", "BR", "JP"]
TABLE_DDL = (
    "CREATE TABLE {name} (id UInt64, video_id UInt32, country LowCardinality(String), watched Float64,"
    " ts DateTime('UTC'), user String) ENGINE = MergeTree ORDER BY (video_id, id)"
)
GROUP_BY = (
    "SELECT country, video_id % 100 AS v, count() AS views, avg(watched) AS avg_watched, uniq(user) AS users"
    " FROM {name} GROUP BY country, v ORDER BY views DESC, country, v LIMIT 20"
)
FILL = (
    "INSERT INTO {name} SELECT number, number % 1000, ['DE','FR','US','GB','IN','BR','JP'][number % 7 + 1],"
    " number % 3600, toDateTime('2024-01-01 00:00:00', 'UTC') + number, concat('user-', toString(number % 50000))"
    " FROM numbers({rows})"
)
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_rows(n: int) -> list[tuple[Any, ...]]:
    return [
        (i, i % 1000, COUNTRIES[i % 7], float(i % 3600), BASE + dt.timedelta(seconds=i), f"user-{i % 50000}")
        for i in range(n)
    ]


def make_frame(rows: list[tuple[Any, ...]]) -> Any:
    columns = list(zip(*rows, strict=True))
    return pd.DataFrame(
        {
            "id": pd.Series(columns[0], dtype="uint64"),
            "video_id": pd.Series(columns[1], dtype="uint32"),
            "country": list(columns[2]),
            "watched": pd.Series(columns[3], dtype="float64"),
            "ts": pd.to_datetime(list(columns[4]), utc=True),
            "user": list(columns[5]),
        }
    )


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_inserts(client_kwargs: dict[str, Any], pid: int, direct: Any, rows: int, batch: int) -> list[str]:
    data = make_rows(rows)
    batches = [data[i : i + batch] for i in range(0, rows, batch)]
    lines = []
    results: dict[str, float] = {}
    for label, compression, columnar in (
        ("server, driver rows, no compression", False, False),
        ("server, driver rows, lz4", "lz4", False),
        ("server, driver columnar, lz4", "lz4", True),
    ):
        client = Client(**client_kwargs, compression=compression)
        client.execute("DROP TABLE IF EXISTS bench_insert")
        client.execute(TABLE_DDL.format(name="bench_insert"))
        payloads = [list(zip(*b, strict=True)) if columnar else b for b in batches]
        cpu_before = cpu_seconds(pid)

        def run(c: Client = client, p: list[Any] = payloads, col: bool = columnar) -> None:
            for chunk in p:
                c.execute("INSERT INTO bench_insert VALUES", chunk, columnar=col)

        elapsed = timed(run)
        server_cpu = cpu_seconds(pid) - cpu_before
        assert client.execute("SELECT count() FROM bench_insert") == [(rows,)]
        client.disconnect()
        results[label] = rows / elapsed
        lines.append(
            f"  {label:<40} {rows / elapsed:>12,.0f} rows/s   ({elapsed:.2f} s; server CPU {server_cpu:.2f} s)"
        )

    frames = [make_frame(b) for b in batches]
    direct.query("DROP TABLE IF EXISTS bench_insert")
    direct.query(TABLE_DDL.format(name="bench_insert"))

    def run_direct() -> None:
        for frame in frames:  # noqa: B007 - chdb's Python() table function reads the local variable
            direct.query("INSERT INTO bench_insert SELECT * FROM Python(frame)")

    elapsed = timed(run_direct)
    assert str(direct.query("SELECT count() FROM bench_insert", "CSV")).strip() == str(rows)
    direct_rate = rows / elapsed
    lines.append(f"  {'chdb direct, pandas DataFrame':<40} {direct_rate:>12,.0f} rows/s   ({elapsed:.2f} s)")
    for label, rate in results.items():
        lines.append(f"  ratio {label:<34} {rate / direct_rate:>12.2f} x direct")
    return lines


def bench_group_by(client_kwargs: dict[str, Any], direct: Any, rows: int, runs: int) -> list[str]:
    client = Client(**client_kwargs)
    client.execute("DROP TABLE IF EXISTS bench_gb")
    client.execute(TABLE_DDL.format(name="bench_gb"))
    client.execute(FILL.format(name="bench_gb", rows=rows))
    client.execute("OPTIMIZE TABLE bench_gb FINAL")
    direct.query("DROP TABLE IF EXISTS bench_gb")
    direct.query(TABLE_DDL.format(name="bench_gb"))
    direct.query(FILL.format(name="bench_gb", rows=rows))
    direct.query("OPTIMIZE TABLE bench_gb FINAL")
    sql = GROUP_BY.format(name="bench_gb")
    expected = client.execute(sql)
    assert len(expected) == 20

    def via_server() -> object:
        return client.execute(sql)

    def via_direct() -> object:
        return direct.query(sql, "Native")

    for fn in (via_server, via_direct, via_server, via_direct):  # warm-up
        fn()
    server_times: list[float] = []
    direct_times: list[float] = []
    for _ in range(runs):  # interleaved, so both see the same background load
        server_times.append(timed(via_server))
        direct_times.append(timed(via_direct))
    client.disconnect()
    server_median, direct_median = statistics.median(server_times), statistics.median(direct_times)
    return [
        f"group-by over {rows:,} rows, {runs} interleaved runs (median / min):",
        f"  {'server (clickhouse-driver)':<40} {server_median * 1000:>9.1f} ms / {min(server_times) * 1000:.1f} ms",
        f"  {'chdb direct':<40} {direct_median * 1000:>9.1f} ms / {min(direct_times) * 1000:.1f} ms",
        f"  ratio server / direct (median) {server_median / direct_median:>18.2f} x",
        f"  ratio server / direct (min) {min(server_times) / min(direct_times):>21.2f} x",
    ]


def bench_concurrency(client_kwargs: dict[str, Any], seconds: float) -> list[str]:
    sys.path.insert(0, str(REPO))
    from tests.clickhouse_server.workers import insert_and_query

    client = Client(**client_kwargs)
    client.execute("DROP TABLE IF EXISTS bench_conc")
    client.execute(
        "CREATE TABLE bench_conc (worker UInt8, seq UInt64, payload String) ENGINE = MergeTree ORDER BY (worker, seq)"
    )
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.starmap(insert_and_query, [(w, client_kwargs, "bench_conc", seconds) for w in range(4)])
    counts = dict(client.execute("SELECT worker, count() FROM bench_conc GROUP BY worker"))
    lost = sum(inserted - counts.get(w, 0) for w, (inserted, _) in enumerate(results))
    total_rows = sum(r for r, _ in results)
    total_queries = sum(q for _, q in results)
    client.disconnect()
    return [
        f"  4 processes for {seconds:.0f} s: {total_rows:,} rows inserted ({total_rows / seconds:,.0f}/s), "
        f"{total_queries:,} queries ({total_queries / seconds:,.0f}/s), rows lost: {lost}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows inserted per variant")
    parser.add_argument("--batch", type=int, default=100_000, help="rows per INSERT")
    parser.add_argument("--groupby-rows", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=15, help="group-by repetitions (median)")
    parser.add_argument(
        "--concurrency-seconds", type=float, default=float(os.environ.get("CH_CONCURRENCY_SECONDS", "60"))
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-ch-") as tmp:
        server = start_server_process(data_dir=Path(tmp) / "server", log_file=Path(tmp) / "server.log")
        direct = chdb.connect(str(Path(tmp) / "direct"))
        try:
            kwargs = server.client_kwargs()
            print(f"chdb {chdb.__version__} (engine {chdb.engine_version}), {os.cpu_count()} CPUs")
            print(f"inserts: {args.rows:,} rows in batches of {args.batch:,}")
            print("\n".join(bench_inserts(kwargs, server.pid, direct, args.rows, args.batch)))
            print("\n".join(bench_group_by(kwargs, direct, args.groupby_rows, args.runs)))
            if args.concurrency_seconds > 0:
                print("concurrency:")
                print("\n".join(bench_concurrency(kwargs, args.concurrency_seconds)))
        finally:
            direct.close()
            code = server.stop()
        print(f"server stopped with exit code {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
