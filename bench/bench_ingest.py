"""Benchmark of POST /events: real HTTP load against gunicorn with the real (Tansu) broker.

Starts its own broker and gunicorn (the project's gunicorn_conf, ANALYTICS_VAR_DIR in a temporary
dir, free ports), prepares realistic 1,000-event batches (about 100 users each, mostly heartbeats,
RFC 3339 and epoch-ms timestamps, dimensions, some properties), then:

1. baseline: the same batches decoded, grouped per userId and produced straight to Kafka from this
   one process (same producer settings, waiting for every acknowledgement), no HTTP, no validation;
2. HTTP: ``--clients`` load-generator processes, each with ``--connections`` keep-alive
   connections (http.client, one thread each), posting batches for ``--seconds`` after a warm-up.

Reports sustained events/s, request latency p50/p99, and CPU seconds per 1,000 events of the server
processes (gunicorn master + workers, from /proc/<pid>/stat), of the broker and of the load
generator. Usage::

    PYTHONPATH=. python bench/bench_ingest.py --seconds 30
    PYTHONPATH=. python bench/bench_ingest.py --gzip --profile   # py-spy (GIL holder) of every worker
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TYPES = ["heartbeat"] * 14 + ["playing", "pause", "seek", "bitrate_change", "rebuffer_start", "rebuffer_end"]


def batch_make(rng: random.Random, *, events: int = 1000, users: int = 100) -> bytes:
    now = int(time.time() * 1000)
    user_ids = [f"user-{rng.getrandbits(48):012x}" for _ in range(users)]
    sessions = {u: str(uuid.UUID(int=rng.getrandbits(128))) for u in user_ids}
    out = []
    for i in range(events):
        user = user_ids[i % users]
        ts = now - rng.randrange(0, 20_000)
        event: dict[str, Any] = {
            "eventId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "type": rng.choice(TYPES),
            "userId": user,
            "sessionId": sessions[user],
            "videoId": f"video-{rng.randrange(5000)}",
            "timestamp": ts
            if i % 2
            else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts / 1000)) + f".{ts % 1000:03d}Z",
            "positionMs": rng.randrange(0, 3_600_000),
            "bitrateKbps": rng.choice([800, 1800, 3500, 6000]),
            "device": rng.choice(["desktop", "mobile", "tv"]),
            "os": rng.choice(["Windows", "macOS", "Android", "iOS"]),
            "browser": rng.choice(["Chrome", "Safari", "Firefox"]),
            "country": rng.choice(["FR", "US", "DE", "BR", "JP"]),
            "cdn": rng.choice(["akamai", "fastly"]),
            "player": "web-3.2.1",
        }
        if i % 10 == 0:
            event["properties"] = {"abTest": "b", "autoplay": True}
        out.append(event)
    return orjson.dumps({"sentAt": now, "events": out})


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def thread_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per thread name (librdkafka names its threads rdk:*; Python threads keep the process name)."""
    out: dict[str, float] = defaultdict(float)
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                comm = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            name = "rdk:broker*" if comm.startswith("rdk:broker") else comm
            out[name] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        pids.extend(int(p) for p in text)
    return pids


# --- load generator (separate processes) --------------------------------------------------------
def client_process(
    port: int,
    bodies: list[bytes],
    gz: bool,
    connections: int,
    start_at: float,
    stop_at: float,
    measure_from: float,
    queue: Any,
) -> None:
    results: list[tuple[float, float, int, int]] = []  # (sent at, latency, status, accepted)
    lock = threading.Lock()
    headers = {"Content-Type": "application/json"}
    if gz:
        headers["Content-Encoding"] = "gzip"

    def run(offset: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = offset
        local = []
        while time.time() < start_at:
            time.sleep(0.01)
        while time.time() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            sent = time.time()
            try:
                conn.request("POST", "/events", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                local.append((sent, time.perf_counter() - t0, 599, 0))
                continue
            accepted = orjson.loads(data).get("accepted", 0) if resp.status == 202 else 0
            if sent >= measure_from:
                local.append((sent, time.perf_counter() - t0, resp.status, accepted))
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=run, args=(k * 7,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put((os.getpid(), cpu_seconds(os.getpid()), results))


# --- baseline: produce the same batches straight to Kafka ----------------------------------------
def baseline(bootstrap: str, bodies: list[bytes], seconds: float) -> dict[str, float]:
    from confluent_kafka import Producer

    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 50,
        "batch.num.messages": 1000,
        "compression.type": "lz4",
    }
    producer = Producer(config)
    pending = [0]

    def delivered(err: Any, msg: Any) -> None:
        pending[0] -= 1

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    events = 0
    i = 0
    while time.perf_counter() - t0 < seconds:
        batch = orjson.loads(bodies[i % len(bodies)])
        i += 1
        groups: dict[str, list[Any]] = defaultdict(list)
        for event in batch["events"]:
            groups[event["userId"]].append(event)
        for user, user_events in groups.items():
            value = orjson.dumps({"v": 1, "userId": user, "receivedAt": 0, "events": user_events})
            while True:
                try:
                    producer.produce("events", value, user.encode(), on_delivery=delivered)
                    pending[0] += 1
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
        events += len(batch["events"])
    producer.flush(30)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {"events_per_s": events / elapsed, "cpu_s_per_1000": cpu / events * 1000, "unacked": pending[0]}


def events_per_message_scrape(port: int) -> tuple[float, float]:
    """(sum, count) of the ingest_events_per_message histogram, summed over the workers; (0, 0) if absent."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/prometheus/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for suffix in values:
            if line.startswith(f"ingest_events_per_message_{suffix} "):
                values[suffix] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per client process")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("WEB_THREADS", "16")))
    parser.add_argument("--gzip", action="store_true", help="send Content-Encoding: gzip bodies")
    parser.add_argument("--baseline-seconds", type=float, default=10.0)
    parser.add_argument("--profile", action="store_true", help="py-spy record of one worker during the run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--worker-connections",
        type=int,
        default=0,
        help="cap keep-alive connections per worker (gunicorn --worker-connections); 0: gunicorn's default",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    var = tmp / "var"
    prom = var / "prometheus"
    prom.mkdir(parents=True)
    env = {
        **os.environ,
        "ANALYTICS_VAR_DIR": str(var),
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
        "INGEST_RATE_LIMIT_REQUESTS": "1000000",
        "WEB_CONCURRENCY": str(args.workers),
        "WEB_THREADS": str(args.threads),
    }
    env.pop("DATABASE_URL", None)  # SQLite under the temporary var dir, like the embedded default
    os.environ.update({k: env[k] for k in ("ANALYTICS_VAR_DIR", "DJANGO_SETTINGS_MODULE", "PROMETHEUS_MULTIPROC_DIR")})
    os.environ.pop("DATABASE_URL", None)

    from analytics_platform.devstack import processes

    broker = processes.broker_start()
    env["KAFKA_BOOTSTRAP_SERVERS"] = os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.address
    import django

    django.setup()
    from analytics_platform import kafka

    kafka.topics_ensure()
    subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v", "0"], env=env, check=True)

    rng = random.Random(42)
    bodies = [batch_make(rng) for _ in range(40)]
    wire = [gzip.compress(b, 5) for b in bodies] if args.gzip else bodies
    print(
        f"batches: {len(bodies)} x 1000 events, {statistics.mean(map(len, bodies)) / 1000:.0f} KB JSON each"
        + (f", {statistics.mean(map(len, wire)) / 1000:.0f} KB gzipped" if args.gzip else "")
    )

    broker_cpu0 = cpu_seconds(broker.process.pid)
    base = baseline(broker.address, bodies, args.baseline_seconds)
    broker_base_cpu = cpu_seconds(broker.process.pid) - broker_cpu0
    print(
        f"baseline (one process, produce straight to Kafka, no HTTP/validation): {base['events_per_s']:,.0f} events/s, "
        f"{base['cpu_s_per_1000'] * 1000:.2f} CPU-ms per 1000 events in the producer, "
        f"broker {broker_base_cpu / (base['events_per_s'] * args.baseline_seconds) * 1e6:.2f} CPU-ms/1000"
    )

    port = processes.free_port()
    gunicorn = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            "python:analytics_platform.gunicorn_conf",
            f"--bind=127.0.0.1:{port}",
            *([f"--worker-connections={args.worker_connections}"] if args.worker_connections else []),
        ],
        env=env,
        cwd=ROOT,
    )
    profiler: list[subprocess.Popen[bytes]] | None = None
    try:
        processes.wait_for_port("127.0.0.1", port, timeout=30, process=gunicorn)
        time.sleep(1.0)
        server_pids = [gunicorn.pid, *children(gunicorn.pid)]
        print(f"server: gunicorn pid {gunicorn.pid}, workers {server_pids[1:]} ({args.threads} threads each)")

        start_at = time.time() + 1.0
        measure_from = start_at + args.warmup
        stop_at = measure_from + args.seconds
        queue: Any = mp.get_context("fork").Queue()
        procs = [
            mp.get_context("fork").Process(
                target=client_process,
                args=(
                    port,
                    wire[k :: args.clients],
                    args.gzip,
                    args.connections,
                    start_at,
                    stop_at,
                    measure_from,
                    queue,
                ),
            )
            for k in range(args.clients)
        ]
        for p in procs:
            p.start()
        time.sleep(max(0.0, measure_from - time.time()))
        per_message_start = events_per_message_scrape(port)
        cpu_start = {pid: cpu_seconds(pid) for pid in server_pids}
        threads_start = thread_cpu(server_pids[1:])
        broker_start = cpu_seconds(broker.process.pid)
        if args.profile:  # every worker: connections are not spread evenly between them
            profiler = [
                subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "-p",
                        str(pid),
                        "-d",
                        str(int(args.seconds)),
                        "-r",
                        "100",
                        "-f",
                        "raw",
                        "--gil",
                        "-o",
                        str(tmp / f"profile-{pid}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for pid in server_pids[1:]
            ]
        time.sleep(max(0.0, stop_at - time.time()))
        cpu_end = {pid: cpu_seconds(pid) for pid in server_pids}
        threads_end = thread_cpu(server_pids[1:])
        broker_end = cpu_seconds(broker.process.pid)
        per_message_end = events_per_message_scrape(port)
        results: list[Any] = []
        client_cpu = 0.0
        for _ in procs:
            _, cpu, res = queue.get(timeout=120)
            client_cpu += cpu
            results.extend(res)
        for p in procs:
            p.join()
        for spy in profiler or []:
            spy.wait(timeout=60)
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)
        broker.stop()

    measured = [r for r in results if r[0] < stop_at]
    ok = [r for r in measured if r[2] == 202]
    statuses: dict[int, int] = defaultdict(int)
    for r in measured:
        statuses[r[2]] += 1
    accepted = sum(r[3] for r in ok)
    rate = accepted / args.seconds
    latencies = [r[1] * 1000 for r in ok]
    server_cpu = sum(cpu_end[p] - cpu_start[p] for p in server_pids)
    per_1000 = server_cpu / accepted * 1000 if accepted else float("nan")
    print(f"HTTP ({args.clients} client processes x {args.connections} connections, {args.seconds:.0f} s measured):")
    print(f"  statuses: {dict(statuses)}")
    print(f"  sustained: {rate:,.0f} events/s accepted ({len(ok) / args.seconds:.1f} requests/s)")
    if latencies:
        print(f"  latency: p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms")
    print(
        f"  server CPU: {server_cpu:.1f} s = {per_1000 * 1000:.2f} CPU-ms per 1000 events "
        f"({per_1000 * 1000:.2f} CPU-us/event; {server_cpu / args.seconds:.2f} cores)"
    )
    print(
        f"  broker CPU: {(broker_end - broker_start) / accepted * 1e6 if accepted else 0:.2f} CPU-ms per 1000 events; "
        f"load generator CPU (whole run incl. warm-up): {client_cpu:.1f} s"
    )
    split = {name: threads_end[name] - threads_start.get(name, 0.0) for name in threads_end}
    print(
        "  worker CPU by thread: "
        + ", ".join(
            f"{name} {cpu / accepted * 1e6:.2f}"
            for name, cpu in sorted(split.items(), key=lambda kv: -kv[1])
            if accepted and cpu > 0.05
        )
        + " CPU-ms/1000 events (Python threads carry the process name)"
    )
    print(
        "  CPU per server process: "
        + ", ".join(f"{pid} {cpu_end[pid] - cpu_start[pid]:.1f} s" for pid in server_pids)
        + f" (master {server_pids[0]})"
    )
    produced, messages = (end - start for end, start in zip(per_message_end, per_message_start, strict=True))
    print(
        f"  Kafka messages: {messages:,.0f}, {produced / messages:.1f} events per message (ingest_events_per_message)"
        if messages
        else "  Kafka messages: not measured (no ingest_events_per_message histogram)"
    )
    print(f"  ratio to baseline: {rate / base['events_per_s']:.2f}")
    if args.profile:
        print(f"  profiles (py-spy raw, one per worker): {tmp}/profile-*.txt")
    if not args.keep and not args.profile:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
