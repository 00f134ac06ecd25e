"""Benchmark: rebuild every rollup from N raw events (default 1 million) and N/10 view summaries.

Starts its own embedded ClickHouse server on a temporary data dir, migrates, generates the raw
rows inside ClickHouse (``INSERT ... SELECT FROM numbers()``, through the materialized views, as
the sink writes them) spread over ``--days`` days ending at today's midnight, notes every rollup's
totals, empties the rollups, then times ``rollups_rebuild`` (the service behind ``manage.py
clickhouse_rollups_rebuild --include-live --quiet-seconds 0``) and checks the totals came back.

Reported: wall time, raw rows per second (events + view summaries, each rebuilt into every rollup
it feeds), rollup rows written, partitions.

    PYTHONPATH=. python bench/bench_rollup_rebuild.py [--rows 1000000] [--days 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EVENTS = """
INSERT INTO events (event_id, type, ts, user_id, session_id, video_id, client_ts, received_at, position_ms,
    bitrate_kbps, error_code, error_message, fatal, device, os, browser, country, cdn, player, properties, late,
    kafka_partition, kafka_offset)
SELECT
    generateUUIDv4(number),
    ['playing', 'heartbeat', 'pause', 'error'][number %% 4 + 1],
    fromUnixTimestamp64Milli(toInt64(%(start_ms)s + intDiv(number * %(span_ms)s, %(rows)s)), 'UTC') AS t,
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
    'cdn-a', 'player-1', '', number %% 50 = 0,
    number %% 8, number
FROM numbers(%(rows)s)
"""

VIEWS = """
INSERT INTO view_summaries (session_id, user_id, video_id, start_ts, end_ts, device, os, browser, country, cdn,
    player, has_view_start, started, startup_time_ms, watch_time_ms, rebuffer_count, rebuffer_duration_ms,
    start_failure, playback_failure, exit_before_start, event_count, kafka_partition, kafka_offset)
SELECT
    concat('session-', toString(number)),
    concat('user-', toString(number %% 100000)),
    concat('video-', toString(number %% 1000)),
    fromUnixTimestamp64Milli(toInt64(%(start_ms)s + intDiv(number * %(span_ms)s, %(rows)s)), 'UTC') AS t,
    t + toIntervalSecond(600),
    ['desktop', 'mobile', 'tv'][number %% 3 + 1],
    ['linux', 'ios', 'android', 'windows'][number %% 4 + 1],
    ['firefox', 'chrome', 'safari'][number %% 3 + 1],
    ['FR', 'DE', 'US', 'BR', 'JP'][number %% 5 + 1],
    'cdn-a', 'player-1',
    1, number %% 10 != 0, 300 + number %% 2000, 600000, number %% 3, (number %% 3) * 1500,
    number %% 10 = 0, number %% 37 = 0, number %% 53 = 0, 50,
    number %% 8, number
FROM numbers(%(rows)s)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="raw events (view summaries: a tenth)")
    parser.add_argument("--days", type=int, default=20, help="days of history, ending at today's midnight")
    args = parser.parse_args()
    if not 1 <= args.days <= 29:  # inside the minute rollups' 30 days
        parser.error("--days must lie between 1 and 29")

    work = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
            "ANALYTICS_VAR_DIR": str(work / "var"),
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "CLICKHOUSE_DATABASE": "bench",
            "CLICKHOUSE_COMPRESSION": "",
            "LOG_LEVEL": "WARNING",
        }
    )
    (work / "var").mkdir()
    from analytics_platform.devstack import processes

    server = processes.clickhouse_start(data_dir=work / "clickhouse")
    os.environ["CLICKHOUSE_HOST"], os.environ["CLICKHOUSE_PORT"] = server.host, str(server.port)
    os.environ["CLICKHOUSE_PASSWORD"] = server.password or ""
    try:
        import django

        django.setup()
        from django.core.management import call_command

        from analytics_platform import rollup_rebuild, warehouse
        from analytics_platform.clickhouse import client_get, database_ensure

        database_ensure()
        call_command("migrate", verbosity=0)
        call_command("migrate", database="clickhouse", verbosity=0)
        today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        start = today - dt.timedelta(days=args.days)
        params = {"start_ms": int(start.timestamp() * 1000), "span_ms": args.days * 86_400_000}
        client = client_get()
        began = time.perf_counter()
        client.execute(EVENTS, {**params, "rows": args.rows})
        client.execute(VIEWS, {**params, "rows": args.rows // 10})
        fed = time.perf_counter() - began
        raw = args.rows + args.rows // 10
        print(f"fed {args.rows:,} events + {args.rows // 10:,} view summaries through the views in {fed:.1f} s")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {args.days} days\n")

        def totals() -> dict[str, tuple[int, ...]]:
            out = {}
            for name in warehouse.rollup_names():
                table = warehouse.table_named(name)
                values = [c for c in table.column_names if c not in table.order_by]
                out[name] = tuple(client.execute(f"SELECT {', '.join(f'sum({v})' for v in values)} FROM {name}")[0])
            return out

        expected = totals()
        for name in warehouse.rollup_names():
            client.execute(f"TRUNCATE TABLE {name}")
        began = time.perf_counter()
        report = rollup_rebuild.rollups_rebuild(include_live=True, quiet_seconds=0)
        wall = time.perf_counter() - began
        assert totals() == expected, "rebuilt rollups differ from what the views wrote"
        print(
            f"rebuilt {len(warehouse.rollup_names())} rollups, {len(report.done)} partitions,"
            f" {report.rows:,} rollup rows in {wall:.1f} s: {raw / wall:,.0f} raw rows/s"
            f" (the views fed them at {raw / fed:,.0f} raw rows/s); totals equal"
        )
        for name in warehouse.rollup_names():
            seconds = sum(r.seconds for r in report.done if r.plan.table == name)
            print(f"  {name:<28} {seconds:6.1f} s")
        client.disconnect()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
