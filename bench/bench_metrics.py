"""Latency of ``GET /metrics`` over HTTP on >= 10 million generated raw events over 30 days.

Run: ``PYTHONPATH=. python bench/bench_metrics.py [--events 10000000] [--requests 300]``

What it does, all on this machine and in a temporary directory:
1. starts the embedded ClickHouse server and migrates Django (SQLite) and ClickHouse (the streams
   schema, whose materialized views fill the rollups during the insert);
2. generates the events with ClickHouse's own generators (``INSERT ... SELECT FROM numbers(N)``):
   views of 30 events (view_start, playing, heartbeats, ended, ~1% errors) over 30 days, 500
   videos with a skewed popularity, 100k users, 5-6 values per dimension; and one view summary
   per view;
3. serves the project with gunicorn (the production config, 2 workers x 8 threads) and measures
   p50/p95/p99 of the typical dashboard queries, sequentially over one keep-alive connection, with
   the query cache disabled (every request reaches ClickHouse), then once more with the cache on;
4. as a baseline in the same run, the same SQL (built by ``metrics.query``) straight through
   clickhouse-driver, so the HTTP/Django overhead is visible.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analytics_platform.devstack import processes  # noqa: E402

DIMS = {
    "country": "['US','DE','FR','BR','JP','IN']",
    "device": "['mobile','desktop','tv']",
    "os": "['ios','android','linux','windows','macos']",
    "browser": "['chrome','safari','firefox','edge']",
    "cdn": "['cdn-a','cdn-b','cdn-c']",
    "player": "['web','native']",
}


def _dim(name: str, salt: int) -> str:
    values = DIMS[name]
    return f"arrayElement({values}, 1 + cityHash64(v, {salt}) % length({values})) AS {name}"


def generate(client: Any, *, events: int, days: int, end: datetime) -> None:
    """Raw events and view summaries with ClickHouse generators (the materialized views fill the rollups)."""
    per_view = 30
    views = -(-events // per_view)  # at least `events` rows
    span_ms = days * 86_400_000
    start_ms = int(end.timestamp() * 1000) - span_ms
    dims = ", ".join(_dim(name, salt) for salt, name in enumerate(DIMS, start=10))
    view_cols = f"""
        v,
        toDateTime64(({start_ms} + cityHash64(v, 1) % {span_ms - per_view * 10_000}) / 1000, 3, 'UTC') AS start_ts,
        concat('u', toString(cityHash64(v, 2) % 100000)) AS user_id,
        concat('s', toString(v)) AS session_id,
        concat('video-', toString(toUInt32(pow((cityHash64(v, 3) % 1000000) / 1000000., 3) * 500))) AS video_id,
        {dims},
        cityHash64(v, 4) % 100 AS outcome
    """
    client.execute(
        f"""
        INSERT INTO events (event_id, type, ts, user_id, session_id, video_id, client_ts, received_at,
                            error_code, fatal, device, os, browser, country, cdn, player, kafka_partition, kafka_offset)
        SELECT generateUUIDv4(number) AS event_id,
               multiIf(k = 0, 'view_start', k = 1, 'playing', k = {per_view - 1}, 'ended',
                       cityHash64(number) % 100 = 0, 'error', 'heartbeat') AS type,
               addMilliseconds(start_ts, k * 10000) AS ts, user_id, session_id, video_id, ts, ts,
               if(type = 'error', 'E42', ''), type = 'error', device, os, browser, country, cdn, player,
               number % 8, number
        FROM (SELECT number, intDiv(number, {per_view}) AS v, number % {per_view} AS k, {view_cols}
              FROM numbers({views * per_view}))
        """,
        settings={"max_insert_threads": 2},
    )
    client.execute(
        f"""
        INSERT INTO view_summaries (session_id, user_id, video_id, start_ts, end_ts, device, os, browser, country,
            cdn, player, has_view_start, started, startup_time_ms, watch_time_ms, rebuffer_count,
            rebuffer_duration_ms, error_count, fatal_error_count, start_failure, playback_failure,
            exit_before_start, max_position_ms, completion, event_count, close_reason, video_watched_id,
            kafka_partition, kafka_offset)
        SELECT session_id, user_id, video_id, start_ts, addMilliseconds(start_ts, {per_view * 10000}), device, os,
            browser, country, cdn, player, 1, outcome < 90, if(outcome < 90, 200 + cityHash64(v, 5) % 4000, 0),
            if(outcome < 90, {(per_view - 2) * 10000}, 0), if(outcome < 90, cityHash64(v, 6) % 3, 0),
            if(outcome < 90, cityHash64(v, 7) % 20000, 0), outcome >= 97, outcome >= 97,
            outcome >= 95 AND outcome < 97, outcome >= 97 OR (outcome < 90 AND cityHash64(v, 8) % 50 = 0),
            outcome >= 90 AND outcome < 95, 280000, NULL, {per_view}, 'ended', generateUUIDv4(v), v % 8, v
        FROM (SELECT number AS v, {view_cols} FROM numbers({views}))
        """,
    )


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (and all their threads), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return q[49], q[94], q[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--data-dir", type=Path, help="reuse (or create and keep) this directory's data")
    args = parser.parse_args()

    keep = args.data_dir is not None
    tmp = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    tmp.mkdir(parents=True, exist_ok=True)
    reuse = (tmp / "db.sqlite3").exists()
    ch = processes.clickhouse_start(data_dir=tmp / "clickhouse")
    web: subprocess.Popen[bytes] | None = None
    try:
        env = {
            "ANALYTICS_ENV": "local",
            "ANALYTICS_VAR_DIR": str(tmp / "var"),
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "CLICKHOUSE_HOST": ch.host,
            "CLICKHOUSE_PORT": str(ch.port),
            "CLICKHOUSE_PASSWORD": ch.password or "",
            "CLICKHOUSE_DATABASE": "bench",
            "METRICS_QUERY_CACHE_SECONDS": "0",
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(env)
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from analytics_platform.clickhouse import client_get, database_ensure
        from metrics import query
        from metrics.models import MetricDefinition

        if not reuse:
            database_ensure()
            call_command("migrate", interactive=False, verbosity=0)
            call_command("migrate", database="clickhouse", interactive=False, verbosity=0)
            get_user_model().objects.create_user(
                username="bench", password="bench-password-123", is_staff=True, is_superuser=True
            )  # a superuser holds accounts.read_metrics
            client = client_get()
            started = time.perf_counter()
            end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            (tmp / "end").write_text(end.isoformat())
            generate(client, events=args.events, days=args.days, end=end)
            print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
            for table in query.ROLLUPS:  # what background merges do over time
                client.execute(f"OPTIMIZE TABLE {table} FINAL")
            client.disconnect()
        client = client_get()
        end = datetime.fromisoformat((tmp / "end").read_text())
        print(f"data ends {end.isoformat()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for table in ("events", "view_summaries", *query.ROLLUPS):
            print(f"  {table:28} {client.execute(f'SELECT count() FROM {table}')[0][0]:>12,} rows")
        client.disconnect()

        port = processes.free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "analytics_platform" / "gunicorn_conf.py")],
            cwd=ROOT,
            env={**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
        )
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=web)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST",
            "/auth/token",
            body=json.dumps({"username": "bench", "password": "bench-password-123"}),
            headers={"Content-Type": "application/json"},
        )
        token = json.loads(conn.getresponse().read())["access"]
        headers = {"Authorization": f"Bearer {token}"}

        def iso(moment: datetime) -> str:
            return moment.isoformat().replace("+00:00", "Z")

        # The windows the dashboards send: a preset range ends at the next bucket boundary (views.py).
        now = end - timedelta(hours=5, minutes=17, seconds=23)  # "now": a few hours before the data ends
        next_hour = now.replace(minute=0, second=0) + timedelta(hours=1)
        next_minute = now.replace(second=0) + timedelta(minutes=1)
        next_day = now.replace(hour=0, minute=0, second=0) + timedelta(days=1)
        month = (next_hour - timedelta(days=args.days), next_hour)
        queries: list[tuple[str, dict[str, Any]]] = [
            (
                "30-day hourly series: views, events, rebuffer_ratio",
                {
                    "metric": ["views", "events", "rebuffer_ratio"],
                    "from": iso(month[0]),
                    "to": iso(month[1]),
                    "interval": "hour",
                },
            ),
            (
                "24-hour per-minute series: events, errors",
                {
                    "metric": ["events", "errors"],
                    "from": iso(next_minute - timedelta(hours=24)),
                    "to": iso(next_minute),
                    "interval": "minute",
                },
            ),
            (
                "30-day breakdown by 50 videos: views, watch_time_ms",
                {
                    "metric": ["views", "watch_time_ms"],
                    "from": iso(next_day - timedelta(days=args.days)),
                    "to": iso(next_day),
                    "groupBy": "videoId",
                    "limit": 50,
                },
            ),
            (
                "  same, range ending on the hour (no day rollup)",
                {
                    "metric": ["views", "watch_time_ms"],
                    "from": iso(month[0]),
                    "to": iso(month[1]),
                    "groupBy": "videoId",
                    "limit": 50,
                },
            ),
            (
                "30-day hourly startup p95 (rows, quantile)",
                {
                    "metric": ["video_startup_time_ms_p95"],
                    "from": iso(month[0]),
                    "to": iso(month[1]),
                    "interval": "hour",
                },
            ),
            (
                "30-day hourly events, range cut at :00:01",
                {
                    "metric": ["events"],
                    "from": iso(month[0] + timedelta(seconds=1)),
                    "to": iso(month[1]),
                    "interval": "hour",
                },
            ),
            (
                "default last 24 h (no from/to), per minute",
                {"metric": ["events", "errors"], "interval": "minute"},
            ),
            (
                "last 24 h to the second, per minute: events, errors",
                {
                    "metric": ["events", "errors"],
                    "from": iso(now - timedelta(hours=24)),
                    "to": iso(now),
                    "interval": "minute",
                },
            ),
        ]
        http_state: dict[str, Any] = {"port": port}

        def http_get(params: dict[str, Any]) -> dict:
            conn = http_state.get("conn")
            if conn is None:  # one keep-alive connection per phase (gunicorn closes idle ones after 30 s)
                conn = http_state["conn"] = http.client.HTTPConnection("127.0.0.1", http_state["port"], timeout=60)
            conn.request("GET", "/metrics?" + urllib.parse.urlencode(params, doseq=True), headers=headers)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{response.status}: {body[:300]!r}")
            return json.loads(body)

        def measure(fn: Any, n: int) -> list[float]:
            for _ in range(5):
                fn()
            samples = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t) * 1000)
            return samples

        definitions = {d.name: d.compile() for d in MetricDefinition.objects.all()}
        web_pids = [web.pid, *children(web.pid)]
        print(f"\n{args.requests} sequential requests per query, cache off; milliseconds (CPU: ms per request)")
        print(
            f"{'query':52} {'tables':44} {'HTTP p50':>8} {'p95':>7} {'p99':>7} {'CPU web':>7} {'CPU ch':>6} | "
            f"{'driver p50':>10} {'p95':>7} {'p99':>7} {'CPU ch':>6}"
        )
        for label, params in queries:
            default_end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
            request = query.MetricRequest(
                start=datetime.fromisoformat(params["from"]) if "from" in params else default_end - timedelta(hours=24),
                end=datetime.fromisoformat(params["to"]) if "to" in params else default_end,
                interval=params.get("interval"),
                group_by=(params["groupBy"],) if "groupBy" in params else (),
                limit=params.get("limit", 100),
            )
            built = [query.query_build(definitions[name], request) for name in params["metric"]]
            tables = "+".join(sorted({t for b in built for t in re.findall(r"FROM (\w+)", b.sql)}))
            http_state["conn"] = None
            n = args.requests
            web_cpu, ch_cpu = cpu_seconds(web_pids), cpu_seconds([ch.process.pid])
            http_samples = measure(lambda p=params: http_get(p), n)
            web_cpu, ch_cpu = cpu_seconds(web_pids) - web_cpu, cpu_seconds([ch.process.pid]) - ch_cpu
            direct = client_get()
            driver_ch = cpu_seconds([ch.process.pid])
            driver_samples = measure(lambda c=direct, qs=built: [c.execute(b.sql, b.params) for b in qs], n)
            driver_ch = cpu_seconds([ch.process.pid]) - driver_ch
            direct.disconnect()
            h, d = percentiles(http_samples), percentiles(driver_samples)
            per_request = [cpu * 1000 / (n + 5) for cpu in (web_cpu, ch_cpu, driver_ch)]  # + the 5 warm-ups
            print(
                f"{label:52} {tables:44} {h[0]:8.1f} {h[1]:7.1f} {h[2]:7.1f} {per_request[0]:7.1f} "
                f"{per_request[1]:6.1f} | {d[0]:10.1f} {d[1]:7.1f} {d[2]:7.1f} {per_request[2]:6.1f}",
                flush=True,
            )

        # The same first three queries with the 10 s query cache on (a fresh server, same data).
        web.terminate()
        web.wait(20)
        port = processes.free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "analytics_platform" / "gunicorn_conf.py")],
            cwd=ROOT,
            env={**os.environ, "PORT": str(port), "PYTHONPATH": str(ROOT), "METRICS_QUERY_CACHE_SECONDS": "10"},
            stdout=subprocess.DEVNULL,
        )
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=web)
        http_state["port"] = port
        print(f"\nwith the query cache on (identical repeated queries), {args.requests} requests; milliseconds")
        for label, params in queries[:3]:
            http_state["conn"] = None
            h = percentiles(measure(lambda p=params: http_get(p), args.requests))
            print(f"{label:52} {'':44} {h[0]:8.1f} {h[1]:7.1f} {h[2]:7.1f}", flush=True)
    finally:
        if web is not None and web.poll() is None:
            web.terminate()
            web.wait(20)
        ch.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
