"""Benchmark of tracing's cost: the ingest request and the stream worker, tracing off against on (100 %, 10 %).

    PYTHONPATH=. python bench/bench_tracing.py [--rounds 5] [--requests 200] [--events 100]

Starts its own Tansu broker, embedded ClickHouse server, schema registry and OTLP receiver
(``manage.py otlp_receiver``; free ports, temporary dirs), then one pipeline per variant, side by
side: a gunicorn (1 worker, 4 threads) and a ``run_stream`` worker on topics of their own
(``KAFKA_TOPIC_PREFIX``), the variants being

* ``off``: ``OTEL_TRACING_ENABLED=false`` (no provider, the hot paths skip tracing);
* ``on-100``: tracing on, every trace sampled, exported to the receiver;
* ``on-10``: tracing on, ``OTEL_TRACES_SAMPLER_RATIO=0.1``.

Each round posts ``--requests`` batches of ``--events`` events (bench_ingest's realistic batches)
to each variant in turn (interleaved, the order reversed every other round: the machine's drift
hits every variant alike), from 4 client threads, and waits until that variant's worker has
processed and written what its gunicorn accepted. Per round and variant: the gunicorn processes'
CPU per request, the request latency p50, the worker's CPU per event over that window (its idle
polling included, the same for every variant). Printed: medians over rounds, ratios on/off.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_ingest import batch_make, children, cpu_seconds  # noqa: E402 -- after the path fix
from bench.bench_streams import _setup_django, events_counted  # noqa: E402

# After a worker counted its events: the sink's chunk is written within its 1.5 s age limit.
WRITE_WAIT_SECONDS = 2.0
VARIANTS = {
    "off": {"OTEL_TRACING_ENABLED": "false"},
    "on-100": {"OTEL_TRACING_ENABLED": "true", "OTEL_TRACES_SAMPLER_RATIO": "1.0"},
    "on-10": {"OTEL_TRACING_ENABLED": "true", "OTEL_TRACES_SAMPLER_RATIO": "0.1"},
}


def post_all(port: int, bodies: list[bytes], threads: int = 4) -> list[float]:
    """POST every body (split across ``threads`` keep-alive connections); the latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def run(part: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        local = []
        for body in part:
            started = time.perf_counter()
            conn.request("POST", "/events", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise RuntimeError(f"POST /events answered {response.status}")
            local.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(local)

    workers = [threading.Thread(target=run, args=(bodies[k::threads],)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


def tree_cpu(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def settle(metrics_port: int, expected: float, *, timeout: float = 120) -> float:
    """Wait until the worker counted ``expected`` events (or its count stops moving); the count."""
    deadline = time.monotonic() + timeout
    last, still_since = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        counted = events_counted(metrics_port) or 0.0
        if counted >= expected:
            return counted
        if counted != last:
            last, still_since = counted, time.monotonic()
        elif time.monotonic() - still_since > 10:
            return counted
        time.sleep(0.1)
    return last


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="requests per variant per round")
    parser.add_argument("--events", type=int, default=100, help="events per request")
    args = parser.parse_args()

    from analytics_platform.devstack import processes
    from analytics_platform.schema_registry.testing import start_registry_process

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    broker = processes.broker_start()
    clickhouse = processes.clickhouse_start(data_dir=tmp / "clickhouse")
    registry = start_registry_process(data_dir=tmp / "schema-registry")
    base_env = {
        "SCHEMA_REGISTRY_URL": registry.url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.address,
        "CLICKHOUSE_HOST": clickhouse.host,
        "CLICKHOUSE_PORT": str(clickhouse.port),
        "CLICKHOUSE_PASSWORD": clickhouse.password or "",
        "CLICKHOUSE_DATABASE": "bench",
        "ANALYTICS_VAR_DIR": str(tmp / "var"),
        "DJANGO_SECRET_KEY": "bench-not-secret",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
        "STREAMS_IDLE_TICK_SECONDS": "0",
        "PYTHONPATH": str(ROOT),
    }
    _setup_django(base_env)
    from django.conf import settings
    from django.core.management import call_command

    from analytics_platform import kafka
    from analytics_platform.clickhouse import database_ensure
    from streams.topic_schemas import schemas_register

    database_ensure()
    call_command("migrate", database="clickhouse", verbosity=0)
    started: list[subprocess.Popen[bytes]] = []
    receiver_port = processes.free_port()
    receiver = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "otlp_receiver", "--port", str(receiver_port)],
        env={**os.environ, **base_env},
        stdout=subprocess.DEVNULL,
    )
    started.append(receiver)
    pipelines: dict[str, dict[str, Any]] = {}
    try:
        processes.wait_for_port("127.0.0.1", receiver_port, timeout=30, process=receiver)
        for name, variant in VARIANTS.items():
            prefix = f"bench-{name}-"
            settings.KAFKA_TOPIC_PREFIX = prefix
            kafka.topics_ensure()
            schemas_register()
            env = {
                **os.environ,
                **base_env,
                **variant,
                "KAFKA_TOPIC_PREFIX": prefix,
                "STREAMS_CONSUMER_GROUP": f"bench-{name}",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver_port}/v1/traces",
                "INGEST_ALLOWLIST_ENABLED": "false",
                "INGEST_RATE_LIMIT_REQUESTS": "0",
                "WEB_CONCURRENCY": "1",
                "WEB_THREADS": "4",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp / f"prom-{name}"),
            }
            (tmp / f"prom-{name}").mkdir()
            web_port, metrics_port = processes.free_port(), processes.free_port()
            web = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "gunicorn"),
                    "-c",
                    "python:analytics_platform.gunicorn_conf",
                    f"--bind=127.0.0.1:{web_port}",
                ],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            worker = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "run_stream", "--metrics-port", str(metrics_port)],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            started += [web, worker]
            processes.wait_for_port("127.0.0.1", web_port, timeout=60, process=web)
            processes.wait_for_port("127.0.0.1", metrics_port, timeout=60, process=worker)
            pipelines[name] = {"web": web, "web_port": web_port, "worker": worker, "metrics_port": metrics_port}

        rng = random.Random(7)
        users = max(1, args.events // 10)
        samples: dict[str, dict[str, list[float]]] = {name: {"req": [], "p50": [], "evt": []} for name in VARIANTS}
        counted = dict.fromkeys(VARIANTS, 0.0)
        for round_no in range(args.rounds + 1):  # round 0 warms every pipeline up and is not reported
            bodies = [batch_make(rng, events=args.events, users=users) for _ in range(args.requests)]
            order = list(VARIANTS) if round_no % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                pipeline = pipelines[name]
                web_before, worker_before = tree_cpu(pipeline["web"].pid), cpu_seconds(pipeline["worker"].pid)
                latencies = post_all(pipeline["web_port"], bodies)
                web_cpu = tree_cpu(pipeline["web"].pid) - web_before
                now = settle(pipeline["metrics_port"], counted[name] + len(bodies) * args.events)
                time.sleep(WRITE_WAIT_SECONDS)  # the sink writes its last chunk
                worker_cpu = cpu_seconds(pipeline["worker"].pid) - worker_before
                events, counted[name] = now - counted[name], now
                if round_no and events > 0:
                    samples[name]["req"].append(web_cpu / len(bodies) * 1e6)
                    samples[name]["p50"].append(statistics.median(latencies) * 1e3)
                    samples[name]["evt"].append(worker_cpu / events * 1e6)
            if round_no:
                print(
                    f"round {round_no}: "
                    + "; ".join(
                        f"{n} {samples[n]['req'][-1]:.0f} us/request, worker {samples[n]['evt'][-1]:.1f} us/event"
                        for n in VARIANTS
                        if samples[n]["evt"]
                    ),
                    flush=True,
                )

        medians = {n: {k: statistics.median(v) for k, v in s.items() if v} for n, s in samples.items()}
        print(f"\n{args.rounds} rounds x {args.requests} requests x {args.events} events per variant (medians)")
        print(f"{'variant':8} {'web CPU us/request':>19} {'latency p50 ms':>15} {'worker CPU us/event':>20}")
        for name, m in medians.items():
            print(f"{name:8} {m['req']:19.0f} {m['p50']:15.2f} {m.get('evt', float('nan')):20.2f}")
        off = medians["off"]
        for name in ("on-100", "on-10"):
            m = medians[name]
            print(
                f"{name} / off: web CPU per request x{m['req'] / off['req']:.3f},"
                f" latency p50 x{m['p50'] / off['p50']:.3f},"
                f" worker CPU per event x{m.get('evt', float('nan')) / off.get('evt', float('nan')):.3f}"
            )
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        for service in (registry, clickhouse, broker):
            service.stop()


if __name__ == "__main__":
    main()
