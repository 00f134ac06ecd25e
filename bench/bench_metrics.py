"""Latency of ``GET /metrics`` over HTTP with the whole local stack running, against its SQL alone.

Run: ``PYTHONPATH=. python bench/bench_metrics.py [--events 24000] [--requests 200]``
(24,000 events are the issue's 800 views, where a query's SQL takes 5-15 ms; ``--events 1000000``
makes ClickHouse the bottleneck instead.)
(``--shapes`` adds the per-shape table; ``--ab DIR`` also serves another checkout, e.g. a
``git worktree`` of the commit before a change, and alternates requests between the two; B reads
a ClickHouse database of its own, migrated by B and holding the same raw rows, so a schema change
is compared too).

What it does, all on this machine and in a temporary directory:
1. starts ``manage.py devstack`` (what ``make run`` runs: broker, ClickHouse server, schema
   registry, gunicorn with the production config, the stream worker, Celery worker and beat) on
   free ports, so the web competes for the two cores with everything it competes with in a real
   deployment (``--no-stack``: only the ClickHouse server and gunicorn);
2. generates the events with ClickHouse's own generators (``INSERT ... SELECT FROM numbers(N)``):
   views of 30 events (view_start, playing, heartbeats, ended, ~1% errors) over 30 days, 500
   videos with a skewed popularity, 100k users, 5-6 values per dimension; and one view summary
   per view. The materialized views fill the rollups during the insert;
3. a member of the "analysts" group (not a superuser: the permission lookup is the real one)
   sends a dashboard mix with the query cache off (every request reaches ClickHouse): 1-4
   metrics per request, per-minute, per-hour and total answers, breakdowns by video and by
   country, ranges from 1 hour to 30 days ending at varied moments. First sequentially over one
   keep-alive connection, then from 20 concurrent clients;
4. in the same run, interleaved request by request, the same SQL (built by ``metrics.query``)
   straight through clickhouse-driver, a request's queries side by side as the web runs them: the
   difference is what the web path costs. (With ``--ab``, the driver runs A's SQL.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
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


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return q[49], q[94], q[98]


#: The dashboard mix: metrics asked together, as the overview and video pages ask them.
METRIC_SETS = [
    ["views", "events", "rebuffer_ratio"],
    ["events", "errors"],
    ["video_startup_time_ms_p95"],
    ["views", "watch_time_ms", "video_start_failure_rate", "playback_failure_rate"],
    ["viewer_experience_score", "startup_time_score"],
    ["unique_viewers"],
]
#: (range, interval): per minute up to a day, per hour up to 7 days, per day beyond; None = totals.
RANGES = [
    (timedelta(hours=1), "minute"),
    (timedelta(hours=6), "minute"),
    (timedelta(hours=24), "minute"),
    (timedelta(days=7), "hour"),
    (timedelta(days=30), "hour"),
    (timedelta(days=30), "day"),
    (timedelta(hours=24), None),
]
BREAKDOWNS = [None, None, ("videoId", 20), ("country", 10)]


def dashboard_mix(*, n: int, end: datetime, seed: int = 21) -> list[dict[str, Any]]:
    """``n`` varied GET /metrics questions (deterministic for a seed) over data ending at ``end``."""
    rng = random.Random(seed)
    mix: list[dict[str, Any]] = []
    while len(mix) < n:
        span, interval = rng.choice(RANGES)
        breakdown = rng.choice(BREAKDOWNS)
        metrics = rng.choice(METRIC_SETS)
        if breakdown is not None and interval == "minute" and span > timedelta(hours=6):
            interval = "hour"  # a per-minute breakdown of a day is not a dashboard question
        # Ends on the minute (what the dashboards send), somewhere in the last 20 days of data.
        to = (end - timedelta(minutes=rng.randrange(0, 20 * 24 * 60))).replace(second=0, microsecond=0)
        start = max(to - span, end - timedelta(days=30))
        params: dict[str, Any] = {"metric": metrics, "from": _iso(start), "to": _iso(to)}
        if interval:
            params["interval"] = interval
        if breakdown is not None:
            params["groupBy"], params["limit"] = breakdown
        mix.append(params)
    return mix


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Web:
    """Keep-alive HTTP to one server, one connection per thread."""

    def __init__(self, name: str, port: int, token: str) -> None:
        self.name, self.port = name, port
        self.headers = {"Authorization": f"Bearer {token}"}
        self._local = threading.local()

    def get(self, params: dict[str, Any], *, path: str = "/metrics", status: int = 200) -> bytes:
        url = f"{path}?" + urllib.parse.urlencode(params, doseq=True)
        conn = getattr(self._local, "conn", None)
        try:
            response, body = self._send(conn, url)
        except (http.client.HTTPException, OSError):
            if conn is None:
                raise
            # gunicorn closes keep-alive connections idle for 30 s (a phase's threads idle meanwhile).
            response, body = self._send(None, url)
        if response.status != status:
            raise RuntimeError(f"{self.name} {response.status}: {body[:300]!r}")
        return body

    def _send(self, conn: http.client.HTTPConnection | None, url: str) -> tuple[http.client.HTTPResponse, bytes]:
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", url, headers=self.headers)
            response = conn.getresponse()
            return response, response.read()
        except (http.client.HTTPException, OSError):
            self._local.conn = None
            conn.close()
            raise


#: Requests that stop early, timed beside the mix: what the layers before ClickHouse cost over HTTP.
FLOORS: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET /healthz (gunicorn, middleware)", "/healthz", {}, 200),
    # Refused by the input serializer (limit >= 1): after authentication, before any definition or query.
    ("GET /metrics 400 (+ auth, validation)", "/metrics", {"metric": "events", "limit": "0"}, 400),
]


class Driver:
    """The same SQL through clickhouse-driver: a request's queries side by side, as the web runs them."""

    def __init__(self, built: list[list[Any]]) -> None:
        from analytics_platform.clickhouse import client_get

        self.built = built
        self._client_get = client_get
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=4)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._client_get()
        return client

    def run(self, index: int) -> None:
        queries = self.built[index]
        if len(queries) == 1:
            self._client().execute(queries[0].sql, queries[0].params)
        else:
            list(self._pool.map(lambda b: self._client().execute(b.sql, b.params), queries))


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def summary(samples: list[float]) -> str:
    p50, p95, p99 = percentiles(samples)
    return f"{p50:7.1f} {p95:7.1f} {p99:7.1f}"


def mix_sequential(mix: list[dict[str, Any]], webs: list[Web], driver: Driver) -> dict[str, list[float]]:
    """Every question once per target, targets in a rotating order so drift hits them alike."""
    targets: list[tuple[str, Any]] = [(w.name, w.get) for w in webs] + [("driver", None)]
    samples: dict[str, list[float]] = {name: [] for name, _ in targets}
    for label, _, _, _ in FLOORS:
        for web in webs:
            samples[f"{web.name} {label}"] = []
    for i, params in enumerate(mix):
        k = i % len(targets)
        for name, get in targets[k:] + targets[:k]:
            if get is None:
                samples[name].append(timed(lambda i=i: driver.run(i)))
            else:
                samples[name].append(timed(lambda g=get, p=params: g(p)))
        for web in webs:
            for label, path, floor, status in FLOORS:
                samples[f"{web.name} {label}"].append(
                    timed(lambda w=web, a=path, f=floor, s=status: w.get(f, path=a, status=s))
                )
    return samples


def mix_concurrent(n_clients: int, mix: list[dict[str, Any]], run: Any) -> tuple[list[float], float]:
    """``n_clients`` threads share the mix (each its own connection); latencies and requests/s."""
    samples: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(mix)))

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            ms = timed(lambda i=i: run(i))
            with lock:
                samples.append(ms)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, len(mix) / (time.perf_counter() - started)


def stack_start(tmp: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, str], int]:
    """``manage.py devstack`` on free ports under ``tmp``; returns it, its environment, the web port."""
    port = processes.free_port()
    env = {
        **os.environ,
        "ANALYTICS_ENV": "local",
        "ANALYTICS_VAR_DIR": str(tmp / "var"),
        "PORT": str(port),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{processes.free_port()}",
        "CLICKHOUSE_PORT": str(processes.free_port()),
        "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{processes.free_port()}",
        "STREAMS_METRICS_PORT": str(processes.free_port()),
        "OTLP_RECEIVER_PORT": str(processes.free_port()),
        "ANALYTICS_ADMIN_USER": "ops",
        "ANALYTICS_ADMIN_PASSWORD": "bench-admin-password-123",
        "METRICS_QUERY_CACHE_SECONDS": "0",
        # Outside var/ (wiped per run): collectstatic then skips unchanged sources on the next run.
        "DJANGO_STATIC_ROOT": str(tmp / "static"),
        "DEMO_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("DATABASE_URL", None)  # the embedded default: SQLite under var/
    stack = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "devstack"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if stack.poll() is not None:
            raise RuntimeError(f"devstack exited with {stack.returncode}; see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return stack, env, port
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"devstack not ready after 300 s; see {log}")


def web_start(checkout: Path, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """gunicorn with the production config, serving ``checkout``'s code on the same databases."""
    port = processes.free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:analytics_platform.gunicorn_conf", f"--bind=127.0.0.1:{port}"],
        cwd=checkout,
        env={**env, "PORT": str(port), "PYTHONPATH": str(checkout)},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    processes.wait_for_port("127.0.0.1", port, timeout=60, process=web)
    return web, port


RAW_TABLES = ("events", "view_summaries", "view_minutes")  # written by the sink, not by views


def schema_b_load(checkout: Path, env: dict[str, str], *, reuse: bool) -> str:
    """A ClickHouse database for B: migrated by B's checkout (its schema, e.g. other rollups), the
    raw rows copied from A's, so B's materialized views fill B's rollups from the same data."""
    from analytics_platform.clickhouse import client_get

    database = "bench_b"
    client = client_get()
    try:
        if not reuse:
            client.execute(f"DROP DATABASE IF EXISTS {database}")
            client.execute(f"CREATE DATABASE {database}")
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--database", "clickhouse", "-v", "0"],
                cwd=checkout,
                env={**env, "CLICKHOUSE_DATABASE": database, "PYTHONPATH": str(checkout)},
                check=True,
            )
            for table in RAW_TABLES:
                client.execute(f"INSERT INTO {database}.{table} SELECT * FROM {table}")
            rollups = client.execute(
                "SELECT name FROM system.tables WHERE database = %(db)s AND engine LIKE '%%SummingMergeTree'",
                {"db": database},
            )
            for (table,) in rollups:  # what background merges do over time, as for A
                client.execute(f"OPTIMIZE TABLE {database}.`{table}` FINAL")
    finally:
        client.disconnect()
    return database


def token_get(port: int, username: str, password: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/auth/token",
        body=json.dumps({"username": username, "password": password}),
        headers={"Content-Type": "application/json"},
    )
    body = json.loads(conn.getresponse().read())
    return str(body["access"])


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGINT if process.args[-1] == "devstack" else signal.SIGTERM)  # type: ignore[index]
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=24_000, help="raw events (30 per view)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--requests", type=int, default=200, help="questions of the mix (and per shape)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="concurrent rounds, targets interleaved")
    parser.add_argument("--no-stack", dest="stack", action="store_false", help="only ClickHouse and gunicorn")
    parser.add_argument("--shapes", action="store_true", help="also the per-shape table of fixed questions")
    parser.add_argument("--ab", type=Path, help="another checkout to serve beside this one (B), same data")
    parser.add_argument("--data-dir", type=Path, help="keep this directory's data (reused with --no-stack)")
    args = parser.parse_args()

    keep = args.data_dir is not None
    tmp = args.data_dir or Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    tmp.mkdir(parents=True, exist_ok=True)
    log = tmp / "stack.log"
    stack: subprocess.Popen[bytes] | None = None
    ch: Any = None
    webs: list[subprocess.Popen[bytes]] = []
    try:
        if args.stack:
            shutil.rmtree(tmp / "var", ignore_errors=True)  # a fresh stack: the broker is memory-only
            stack, env, port = stack_start(tmp, log)
            os.environ.update({k: v for k, v in env.items() if k != "PORT"})
            reuse = False
        else:
            reuse = (tmp / "db.sqlite3").exists()
            ch = processes.clickhouse_start(data_dir=tmp / "clickhouse")
            env = {
                **os.environ,
                "ANALYTICS_ENV": "local",
                "ANALYTICS_VAR_DIR": str(tmp / "var"),
                "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
                "CLICKHOUSE_HOST": ch.host,
                "CLICKHOUSE_PORT": str(ch.port),
                "CLICKHOUSE_PASSWORD": ch.password or "",
                "CLICKHOUSE_DATABASE": "bench",
                "METRICS_QUERY_CACHE_SECONDS": "0",
                "LOG_LEVEL": "WARNING",
            }
            os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "analytics_platform.settings"
        import django

        django.setup()
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group
        from django.core.management import call_command

        from analytics_platform.clickhouse import client_get, database_ensure
        from metrics import query
        from metrics.models import MetricDefinition

        if not reuse:
            if not args.stack:
                database_ensure()
                call_command("migrate", interactive=False, verbosity=0)
                call_command("migrate", database="clickhouse", interactive=False, verbosity=0)
            # An analyst as ops make one: the group's permission, looked up as for any analyst.
            user = get_user_model().objects.create_user(username="bench", password="bench-password-123")
            user.groups.add(Group.objects.get(name="analysts"))
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
        what = "the whole devstack (web, stream worker, Celery worker and beat)" if args.stack else "ClickHouse + web"
        print(f"{what}; data ends {end.isoformat()}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for table in ("events", "view_summaries"):
            print(f"  {table:28} {client.execute(f'SELECT count() FROM {table}')[0][0]:>12,} rows")
        client.disconnect()

        if not args.stack:
            web, port = web_start(ROOT, env, log)
            webs.append(web)
        targets = [Web("A", port, token_get(port, "bench", "bench-password-123"))]
        if args.ab is not None:
            env_b = {**env, "CLICKHOUSE_DATABASE": schema_b_load(args.ab.resolve(), env, reuse=reuse)}
            web_b, port_b = web_start(args.ab.resolve(), env_b, log)
            webs.append(web_b)
            targets.append(Web("B", port_b, token_get(port_b, "bench", "bench-password-123")))
            print(
                f"A: {ROOT}, B: {args.ab.resolve()} (same Django database and raw rows; B's ClickHouse"
                f" schema migrated by B, its rollups filled by B's views; both gunicorn_conf)"
            )

        definitions = {d.name: d.compile() for d in MetricDefinition.objects.all()}
        mix = dashboard_mix(n=args.requests, end=end)
        built = [
            query.queries_build([definitions[name] for name in params["metric"]], _request(params, query))
            for params in mix
        ]
        driver = Driver(built)
        for target in targets:  # warm every thread's connection and the server's caches
            for params in mix[:10]:
                target.get(params)
        for i in range(10):
            driver.run(i)
        queries = sum(len(b) for b in built)
        print(f"\ndashboard mix: {len(mix)} questions, {queries} ClickHouse queries; cache off; milliseconds")
        print(f"{'sequential (one connection)':42} {'p50':>7} {'p95':>7} {'p99':>7}   overhead over driver p50 / p95")
        seq = mix_sequential(mix, targets, driver)
        for name, samples in seq.items():
            label = "driver (same SQL)" if name == "driver" else f"HTTP {name}"
            line = f"  {label:40} {summary(samples)}"
            if name in {t.name for t in targets}:
                diff = sorted(h - d for h, d in zip(samples, seq["driver"], strict=True))
                line += f"   {statistics.median(diff):6.1f} / {percentiles(diff)[1]:6.1f}"
            print(line, flush=True)

        slowest_print(mix, built, seq["driver"])

        print(f"{f'{args.clients} concurrent clients':42} {'p50':>7} {'p95':>7} {'p99':>7}   requests/s")
        conc: dict[str, list[float]] = {}
        rates: dict[str, list[float]] = {}
        runners: list[tuple[str, Any]] = [(f"HTTP {t.name}", lambda i, t=t: t.get(mix[i])) for t in targets] + [
            ("driver (same SQL)", driver.run)
        ]
        for r in range(args.rounds):
            order = runners[r % len(runners) :] + runners[: r % len(runners)]
            for name, run in order:
                samples, rate = mix_concurrent(args.clients, mix, run)
                conc.setdefault(name, []).extend(samples)
                rates.setdefault(name, []).append(rate)
        for name, _ in runners:
            print(f"  {name:40} {summary(conc[name])}   {statistics.mean(rates[name]):8.1f}", flush=True)

        if args.shapes:
            shapes_table(targets[0], end=end, n=args.requests, definitions=definitions, query=query)
    finally:
        for web in webs:
            stop(web)
        stop(stack, timeout=180)
        if ch is not None:
            ch.stop()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def slowest_print(mix: list[dict[str, Any]], built: list[list[Any]], driver_ms: list[float], n: int = 8) -> None:
    """The questions whose SQL took longest (what sets the p95), with the tables each query read."""
    print(f"  slowest {n} questions through the driver (ms, range, interval, groupBy, metrics: tables read)")
    for i in sorted(range(len(mix)), key=lambda i: -driver_ms[i])[:n]:
        params = mix[i]
        span = datetime.fromisoformat(params["to"]) - datetime.fromisoformat(params["from"])
        metrics = "; ".join(
            "+".join(params["metric"][m] for m in b.members)
            + ": "
            + "+".join(sorted(set(re.findall(r"FROM (\w+)", b.sql))))
            for b in built[i]
        )
        print(
            f"    {driver_ms[i]:7.1f} {span.total_seconds() / 3600:6.0f} h {params.get('interval', '-'):>6}"
            f" {params.get('groupBy', '-'):>8}  {metrics}"
        )


def _request(params: dict[str, Any], query: Any) -> Any:
    return query.MetricRequest(
        start=datetime.fromisoformat(params["from"]),
        end=datetime.fromisoformat(params["to"]),
        interval=params.get("interval"),
        group_by=(params["groupBy"],) if "groupBy" in params else (),
        limit=params.get("limit", 100),
    )


def shapes_table(web: Web, *, end: datetime, n: int, definitions: dict[str, Any], query: Any) -> None:
    """The earlier table: fixed dashboard questions, each ``n`` times over HTTP, then through the driver."""
    now = end - timedelta(hours=5, minutes=17, seconds=23)  # "now": a few hours before the data ends
    next_hour = now.replace(minute=0, second=0) + timedelta(hours=1)
    next_minute = now.replace(second=0) + timedelta(minutes=1)
    next_day = now.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    month = (next_hour - timedelta(days=30), next_hour)
    shapes: list[tuple[str, dict[str, Any]]] = [
        (
            "30-day hourly: views, events, rebuffer_ratio",
            {
                "metric": ["views", "events", "rebuffer_ratio"],
                "from": _iso(month[0]),
                "to": _iso(month[1]),
                "interval": "hour",
            },
        ),
        (
            "24-hour per-minute: events, errors",
            {
                "metric": ["events", "errors"],
                "from": _iso(next_minute - timedelta(hours=24)),
                "to": _iso(next_minute),
                "interval": "minute",
            },
        ),
        (
            "24-hour per-minute startup p95",
            {
                "metric": ["video_startup_time_ms_p95"],
                "from": _iso(next_minute - timedelta(hours=24)),
                "to": _iso(next_minute),
                "interval": "minute",
            },
        ),
        (
            "30-day by 50 videos: views, watch_time_ms",
            {
                "metric": ["views", "watch_time_ms"],
                "from": _iso(next_day - timedelta(days=30)),
                "to": _iso(next_day),
                "groupBy": "videoId",
                "limit": 50,
            },
        ),
        (
            "30-day hourly startup p95",
            {"metric": ["video_startup_time_ms_p95"], "from": _iso(month[0]), "to": _iso(month[1]), "interval": "hour"},
        ),
        (
            "last 24 h to the second, per minute",
            {
                "metric": ["events", "errors"],
                "from": _iso(now - timedelta(hours=24)),
                "to": _iso(now),
                "interval": "minute",
            },
        ),
    ]
    print(f"\nper shape, {n} sequential requests each, interleaved with the driver; milliseconds")
    print(
        f"{'question':44} {'tables':44} {'HTTP p50':>8} {'p95':>7} {'p99':>7} | "
        f"{'driver p50':>10} {'p95':>7} {'p99':>7}"
    )
    for label, params in shapes:
        built = query.queries_build([definitions[name] for name in params["metric"]], _request(params, query))
        tables = "+".join(sorted({t for b in built for t in re.findall(r"FROM (\w+)", b.sql)}))
        driver = Driver([built])
        http_samples, driver_samples = [], []
        for i in range(n + 5):
            h = timed(lambda p=params: web.get(p))
            d = timed(lambda dr=driver: dr.run(0))
            if i >= 5:
                http_samples.append(h)
                driver_samples.append(d)
        print(f"{label:44} {tables:44} {summary(http_samples)} | {summary(driver_samples)}", flush=True)


if __name__ == "__main__":
    main()
