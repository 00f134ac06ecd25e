"""Benchmark: export one day of N (default 10 million) raw events from ClickHouse.

Starts its own embedded ClickHouse server on a temporary data dir, generates the day inside
ClickHouse (``INSERT ... SELECT FROM numbers()``), then measures, in this one run:

1. ``read``      -- baseline: the same streamed ClickHouse read (``execute_iter``), rows discarded;
2. ``arrow``     -- the read plus the conversion to Arrow record batches, nothing written;
3. ``local``     -- the full export (``partition_export``) to the local Parquet archive;
4. ``bigquery``  -- optionally (``--bigquery``), the full export to a bqemulator started here.

For each phase: wall time, rows/s, CPU seconds, and the peak RSS of this process during the phase
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; the ClickHouse server is a
separate process and not counted). tracemalloc is not used: it slows the Python row loop ~2x.

    PYTHONPATH=. python bench/bench_export.py [--rows 10000000] [--bigquery]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset VmHWM to the current RSS (Linux >= 4.0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measure(name: str, rows_expected: int, action: Callable[[], int]) -> dict[str, float]:
    _peak_reset()
    rss_before = _status_kib("VmRSS")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    rows = action()
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    peak = _status_kib("VmHWM")
    assert rows == rows_expected, (name, rows, rows_expected)
    result = {
        "rows": rows,
        "seconds": wall,
        "rows_per_s": rows / wall,
        "cpu_s": cpu,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_mib": peak / 1024,
        "peak_growth_mib": (peak - rss_before) / 1024,
    }
    print(
        f"{name:<9} {rows:>11,} rows {wall:8.2f} s {rows / wall:>11,.0f} rows/s  cpu {cpu:7.2f} s  "
        f"rss before {rss_before / 1024:7.1f} MiB  peak {peak / 1024:7.1f} MiB  (+{(peak - rss_before) / 1024:.1f})",
        flush=True,
    )
    return result


GENERATE = """
INSERT INTO events (event_id, type, ts, user_id, session_id, video_id, client_ts, received_at, position_ms,
    bitrate_kbps, error_code, error_message, fatal, device, os, browser, country, cdn, player, properties, late,
    kafka_partition, kafka_offset)
SELECT
    generateUUIDv4(number),
    ['playing', 'heartbeat', 'pause', 'error'][number %% 4 + 1],
    fromUnixTimestamp64Milli(toInt64(%(start_ms)s + intDiv(number * 86400000, %(rows)s)), 'UTC') AS t,
    concat('user-', toString(number %% 100000)),
    concat('session-', toString(intDiv(number, 50))),
    concat('video-', toString(number %% 1000)),
    t, t,
    number %% 3600000,
    if(number %% 4 = 3, NULL, 1600),
    if(number %% 4 = 3, 'E42', ''),
    if(number %% 4 = 3, 'network error', ''),
    number %% 8 = 3,
    ['desktop', 'mobile', 'tv'][number %% 3 + 1],
    ['linux', 'ios', 'android', 'windows'][number %% 4 + 1],
    ['firefox', 'chrome', 'safari'][number %% 3 + 1],
    ['FR', 'DE', 'US', 'BR', 'JP'][number %% 5 + 1],
    'cdn-a', 'player-1', '', 0,
    number %% 8, number
FROM numbers(%(rows)s)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--bigquery", action="store_true", help="also export to a bqemulator started here")
    parser.add_argument("--block-size", type=int, default=65536)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
            "ANALYTICS_VAR_DIR": str(work / "var"),
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "CLICKHOUSE_DATABASE": "bench",
            "CLICKHOUSE_COMPRESSION": "",
            "ETL_LOCAL_DIR": str(work / "exports"),
            "ETL_MAX_BLOCK_SIZE": str(args.block_size),
            "LOG_LEVEL": "WARNING",
        }
    )
    (work / "var").mkdir()
    from analytics_platform.devstack import processes

    server = processes.clickhouse_start(data_dir=work / "clickhouse")
    os.environ["CLICKHOUSE_HOST"], os.environ["CLICKHOUSE_PORT"] = server.host, str(server.port)
    os.environ["CLICKHOUSE_PASSWORD"] = server.password or ""
    emulator = None
    try:
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command

        from analytics_platform.clickhouse import client_get, database_ensure
        from etl.destinations import BigQueryDestination, LocalParquetDestination
        from etl.services import clickhouse_columns_get, partition_batches, partition_export
        from etl.tables import Partition, export_table_get

        database_ensure()
        call_command("migrate", verbosity=0)
        call_command("migrate", database="clickhouse", verbosity=0)
        day = dt.date(2026, 11, 1)
        start_ms = int(dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC).timestamp() * 1000)
        client = client_get()
        started = time.perf_counter()
        client.execute(GENERATE, {"rows": args.rows, "start_ms": start_ms})
        count = client.execute("SELECT count() FROM events WHERE toDate(ts, 'UTC') = %(day)s", {"day": day})[0][0]
        print(f"generated {count:,} events for {day} inside ClickHouse in {time.perf_counter() - started:.1f} s")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cores, block size {args.block_size}, "
            f"ClickHouse server pid {server.process.pid} (not counted in RSS)\n"
        )
        table = export_table_get("events")
        columns = clickhouse_columns_get(client=client, table=table)
        partition = Partition(day=day)

        def read_only() -> int:
            where = "ts >= toDateTime(%(start)s, 'UTC') AND ts < toDateTime(%(end)s, 'UTC')"
            select = ", ".join(column.select_expression for column in columns)
            params = {"start": int(partition.start.timestamp()), "end": int(partition.end.timestamp())}
            rows = 0
            for chunk in client.execute_iter(
                f"SELECT {select} FROM events WHERE {where}",
                params,
                settings={"max_block_size": args.block_size},
                chunk_size=args.block_size,
            ):
                rows += len(chunk)
            return rows

        def arrow_only() -> int:
            batches = partition_batches(
                client=client, table=table, columns=columns, partition=partition, block_size=args.block_size
            )
            return sum(batch.num_rows for batch in batches)

        def export_to(destination: Any) -> Callable[[], int]:
            def run() -> int:
                result = partition_export(table="events", day=day, destination=destination)
                print(f"          -> {result.destination}: {result.bytes / 2**20:.1f} MiB Parquet", flush=True)
                return result.rows

            return run

        results = {
            "read": _measure("read", count, read_only),
            "arrow": _measure("arrow", count, arrow_only),
            "local": _measure("local", count, export_to(LocalParquetDestination(Path(settings.ETL_LOCAL_DIR)))),
        }
        if args.bigquery:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from tests.etl.conftest import BigQueryEmulator

            root = work / "bqemulator"
            emulator = BigQueryEmulator(
                home=root / "home", data_dir=root / "data", staging_dir=root / "staging", log_path=root / "log"
            )
            for folder in (emulator.home, emulator.data_dir, emulator.staging_dir):
                folder.mkdir(parents=True)
            emulator.install_extension()
            emulator.start()
            destination = BigQueryDestination(client=emulator.client(), dataset="bench", replace_mode="merge")
            try:
                results["bigquery"] = _measure("bigquery", count, export_to(destination))
                loaded = next(iter(emulator.client().query("SELECT COUNT(*) FROM `bench.events`").result()))[0]
                print(f"          bqemulator holds {loaded:,} rows")
            except Exception as exc:  # noqa: BLE001 -- report, do not hide, what the emulator could not do
                print(f"bigquery  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
        base = results["read"]["rows_per_s"]
        print()
        for name, result in results.items():
            print(
                f"{name:<9} {result['rows_per_s'] / base:5.2f} x the read baseline, "
                f"{result['cpu_s'] / result['rows'] * 1e6:6.2f} CPU-us/row"
            )
        client.disconnect()
    finally:
        if emulator is not None:
            emulator.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)  # the Parquet files and data dirs take gigabytes


if __name__ == "__main__":
    main()
