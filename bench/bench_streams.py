"""Benchmark of the stream worker: events/s per worker process, CPU per event, freshness.

    PYTHONPATH=. python bench/bench_streams.py [--events 300000] [--rate 20000] [--seconds 30] [--repeat 3]
    PYTHONPATH=. python bench/bench_streams.py --worker-only --repeat 3 --variant "STREAMS_X=1 STREAMS_Y=2"
    PYTHONPATH=. python bench/bench_streams.py --variant "BENCH_CHECKOUT=../base CLICKHOUSE_DATABASE=bench_base"

A variant with its own ``CLICKHOUSE_DATABASE`` gets that database migrated by its own checkout
(a schema A/B: each worker writes the schema of its version). Each worker run also prints, from
``system.part_log``, the parts and rows inserted and the merges and their CPU per table.

Starts its own Tansu broker, embedded ClickHouse server and schema registry (free ports, temporary
dirs; the derived events are Avro through the registry, as in production), then:

1. pure processor: ``PartitionProcessor`` over the generated messages in-process (DictStore), no
   Kafka, no ClickHouse -- the ceiling of the Python processing itself;
2. baseline: a Quix app that only consumes the same topic (stateless ``update``), in its own
   process -- what one Quix process costs before any work;
3. worker: ``manage.py run_stream`` over the same backlog, until ClickHouse holds every event and
   every view summary -- events/s and CPU-seconds per event of one worker process, ``--repeat``
   times (a fresh consumer group and emptied tables each time; medians). Also printed: the worker's
   capacity on a core of its own (1 / its CPU per event) and what the embedded ClickHouse server and
   the broker, which share this machine's cores, cost per event -- the ceiling they put on any
   worker here;
4. freshness: a producer at a steady ``--rate`` for ``--seconds`` while the worker runs; every
   event's ``receivedAt`` (the time ingest would stamp at POST) is compared with the moment a poller
   (every 200 ms) first sees it in ClickHouse -> p50/p95 event-to-queryable latency.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _setup_django(env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")
    import django

    django.setup()


def baseline_main(topic: str, messages: int, group: str) -> None:
    """A Quix app that only consumes: the per-process floor of Quix + librdkafka."""
    _setup_django({})
    state_dir = tempfile.mkdtemp(prefix="bench-baseline-state-")  # Quix's default is ./state
    from quixstreams import Application
    from quixstreams.kafka.configuration import ConnectionConfig

    from analytics_platform import kafka

    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(kafka.client_config(), ignore_extras=True),
        consumer_group=group,
        auto_offset_reset="earliest",
        consumer_extra_config={"session.timeout.ms": 6000},
        commit_interval=5,
        use_changelog_topics=False,
        state_dir=state_dir,
    )
    seen = {"n": 0, "first": 0.0}

    def count(value: bytes) -> None:
        if not seen["n"]:
            seen["first"] = time.monotonic()
        seen["n"] += 1
        if seen["n"] >= messages:
            elapsed = time.monotonic() - seen["first"]
            print(f"BASELINE {elapsed:.3f}", flush=True)
            app.stop()

    sdf = app.dataframe(app.topic(topic, value_deserializer="bytes", key_deserializer="bytes"))
    sdf.update(count)
    try:
        app.run()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a process's threads by name (the main thread as ``main``, librdkafka's as one)."""
    groups: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile (a librdkafka helper)
        seconds = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        name = "main" if task.name == str(pid) else ("librdkafka" if comm.startswith("rdk:") else comm)
        groups[name] = groups.get(name, 0.0) + seconds
    return groups


def thread_cpu(pid: int, before: dict[str, float] | None = None) -> str:
    """CPU seconds of a process's threads (since ``before``, a ``thread_seconds`` of it): the main
    thread, other Python threads, librdkafka's; ClickHouse's pools by name (MergeMutate...)."""
    groups = thread_seconds(pid)
    if before is not None:
        groups = {name: seconds - before.get(name, 0.0) for name, seconds in groups.items()}
    shown = sorted(((n, s) for n, s in groups.items() if s >= 0.05), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in shown)


def merges_settle(client: Any, limit_s: float = 20.0) -> None:
    """Wait (at most ``limit_s``) until the server runs no merge of this database: the merges a
    run caused belong to its cost, and a schema that merges later must not look cheaper."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if not client.execute("SELECT count() FROM system.merges WHERE database = currentDatabase()")[0][0]:
            return
        time.sleep(0.25)


def parts_by_table(client: Any, since: float) -> list[tuple[str, int, int, int, int, float]]:
    """Per table, from ``system.part_log`` since ``since`` (epoch seconds): parts inserted, rows
    inserted, merges, rows read by merges, merge CPU seconds (user + system).

    The server keeps the log when started with ``CLICKHOUSE_SERVER_PART_LOG=1`` (this benchmark
    does); the insert side of a materialized view's target shows as its new parts.
    """
    client.execute("SYSTEM FLUSH LOGS")
    rows = client.execute(
        "SELECT table, countIf(event_type = 'NewPart'), sumIf(rows, event_type = 'NewPart'),"
        " countIf(event_type = 'MergeParts'), sumIf(read_rows, event_type = 'MergeParts'),"
        " sumIf(ProfileEvents['UserTimeMicroseconds'] + ProfileEvents['SystemTimeMicroseconds'],"
        " event_type = 'MergeParts') / 1e6"
        " FROM system.part_log WHERE database = currentDatabase()"
        " AND event_time_microseconds >= fromUnixTimestamp64Micro(%(since)s) GROUP BY table",
        {"since": int(since * 1e6)},
    )
    out = [(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5])) for r in rows]
    return sorted(out, key=lambda r: -r[5])


def parts_print(rows: list[tuple[str, int, int, int, int, float]], total_events: int) -> None:
    merge_cpu = sum(r[5] for r in rows)
    print(
        f"  per table (system.part_log): merge CPU {merge_cpu:.1f} s in all "
        f"({merge_cpu / total_events * 1e6:.1f} CPU-us/event); "
        "table: inserted parts / rows, merges / rows read, merge CPU"
    )
    for table, parts, rows_in, merges, merged, cpu in rows:
        print(f"    {table}: {parts:,} / {rows_in:,}, {merges:,} / {merged:,}, {cpu:.2f} s")


def tables_truncate(client: Any) -> None:
    """Empty every table (not the views) of the benchmark's database, for the next worker run."""
    rows = client.execute(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine NOT IN ('MaterializedView', 'View') AND name != 'django_migrations'"
    )
    for (name,) in rows:
        client.execute(f"TRUNCATE TABLE `{name}`")


def events_counted(metrics_port: int) -> float | None:
    """The worker's ``streams_events_total`` (events processed so far), from its Prometheus port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("streams_events_total "):
            return float(line.split()[1])
    return None


def worker_measure(
    worker: subprocess.Popen[bytes],
    metrics_port: int,
    client: Any,
    expected: tuple[int, int],
    total_events: int,
    clickhouse_pid: int,
    broker_pid: int,
) -> dict[str, float]:
    """Wait until ClickHouse holds every event and view; the worker's rate and everyone's CPU.

    Two rates: events over the whole run (start, group join and the wait for the last checkpoint
    included), and the processing rate, from the worker's own event counter between 10% and 90%
    of the events (checkpoints included, start and end excluded). Rows reach ClickHouse in steps
    (chunks, checkpoints), which made a rate read from the table swing by a third between runs.
    """

    def counts() -> tuple[int, int]:
        a = client.execute("SELECT count() FROM events")[0][0]
        b = client.execute("SELECT count() FROM view_summaries")[0][0]
        return int(a), int(b)

    ch_cpu_before = cpu_of(clickhouse_pid)
    ch_threads_before = thread_seconds(clickhouse_pid)
    broker_cpu_before = cpu_of(broker_pid)
    launch = time.monotonic()
    since = time.time()
    marks: dict[float, tuple[float, float, float]] = {}  # fraction -> (time, events counted, worker CPU)
    while True:
        got = counts()
        counted = events_counted(metrics_port)
        if counted is not None:
            for fraction in (0.1, 0.9):
                if fraction not in marks and counted >= fraction * total_events:
                    marks[fraction] = (time.monotonic(), counted, cpu_of(worker.pid))
        if got >= expected:
            break
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode}; rows {got} of {expected}")
        time.sleep(0.2)
    done = time.monotonic()
    assert got == expected, (got, expected)
    cpu = cpu_of(worker.pid)
    ch_cpu_done = cpu_of(clickhouse_pid)
    merges_settle(client)
    ch_cpu_settled = cpu_of(clickhouse_pid)
    print(f"  worker CPU by thread: {thread_cpu(worker.pid)}")
    print(f"  ClickHouse server CPU by thread: {thread_cpu(clickhouse_pid, ch_threads_before)}")
    parts = parts_by_table(client, since)
    parts_print(parts, total_events)
    (t10, n10, cpu10), (t90, n90, cpu90) = marks[0.1], marks[0.9]
    return {
        "events_per_s": total_events / (done - launch),
        "steady_events_per_s": (n90 - n10) / max(1e-6, t90 - t10),
        "cpu_us": cpu / total_events * 1e6,
        "steady_cpu_us": (cpu90 - cpu10) / max(1.0, n90 - n10) * 1e6,
        "clickhouse_us": (ch_cpu_done - ch_cpu_before) / total_events * 1e6,
        # Including the merges still running when the last row arrived (until none runs, 20 s at most).
        "clickhouse_settled_us": (ch_cpu_settled - ch_cpu_before) / total_events * 1e6,
        "merge_cpu_us": sum(r[5] for r in parts) / total_events * 1e6,
        "broker_us": (cpu_of(broker_pid) - broker_cpu_before) / total_events * 1e6,
        "peak_rss_mb": peak_rss_mb(worker.pid),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rate", type=int, default=20_000, help="events/s of the freshness phase")
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--profile", action="store_true", help="cProfile the pure processor")
    parser.add_argument("--repeat", type=int, default=1, help="worker runs over the backlog (the median is reported)")
    parser.add_argument(
        "--variant",
        default="",
        help='"NAME=VALUE ...": also run a worker with this environment, interleaved;'
        " BENCH_CHECKOUT=<dir> runs that worker from another checkout of the project (version against version)",
    )
    parser.add_argument(
        "--worker-only", action="store_true", help="skip the pure processor, the baseline and the freshness phase"
    )
    parser.add_argument(
        "--batch-ms", type=int, default=10_000, help="how often a player sends its events (one message per request)"
    )
    parser.add_argument(
        "--coalesce",
        type=int,
        default=16,
        help="events per v2 message (what the ingest coalescer makes of many requests; 0: one v1 message per request)",
    )
    args = parser.parse_args()

    from analytics_platform.devstack import processes

    tmp = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    os.environ["CLICKHOUSE_SERVER_PART_LOG"] = "1"  # the per-table breakdown (parts_by_table)
    broker = processes.broker_start()
    clickhouse = processes.clickhouse_start(data_dir=tmp / "clickhouse")
    from analytics_platform.schema_registry.testing import start_registry_process

    registry = start_registry_process(data_dir=tmp / "schema-registry")
    env = {
        "SCHEMA_REGISTRY_URL": registry.url,
        "KAFKA_BOOTSTRAP_SERVERS": broker.address,
        "CLICKHOUSE_HOST": clickhouse.host,
        "CLICKHOUSE_PORT": str(clickhouse.port),
        "CLICKHOUSE_PASSWORD": clickhouse.password or "",
        "CLICKHOUSE_DATABASE": "bench",
        "ANALYTICS_VAR_DIR": str(tmp / "var"),
        "DJANGO_SECRET_KEY": "bench-not-secret",
        "STREAMS_CONSUMER_GROUP": "bench-worker",
        "LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
    }
    _setup_django(env)
    from confluent_kafka import Producer
    from django.conf import settings
    from django.core.management import call_command

    from analytics_platform import event_format, kafka
    from analytics_platform.clickhouse import client_get, database_ensure
    from streams.processors import PartitionProcessor
    from tests.support.simulate import batches_coalesce, stream_generate
    from tests.support.stores import DictStore

    workers: list[subprocess.Popen[bytes]] = []
    try:
        kafka.topics_ensure()
        from streams.topic_schemas import schemas_register

        schemas_register()
        database_ensure()
        call_command("migrate", database="clickhouse", verbosity=0)
        views = max(1, args.events // 11)
        stream = stream_generate(
            views=views, users=max(10, views // 10), seed=99, poison=False, batch_ms=args.batch_ms, disorder_rate=0
        )
        total_events = sum(len(m.events) for m in stream.messages)
        request_count = len(stream.messages)
        if args.coalesce:
            stream.messages = batches_coalesce(
                stream.messages, partitions=settings.KAFKA_DEFAULT_PARTITIONS, max_events=args.coalesce
            )
        print(f"generated {request_count} requests, {total_events} events, {len(stream.truth.views)} views")
        print(
            f"{len(stream.messages)} messages, mean {total_events / len(stream.messages):.1f} events per message "
            + (f"(v2 batches of up to {args.coalesce})" if args.coalesce else "(v1: one per user per request)")
        )

        # 1. pure processor, --repeat times (the median: this machine's speed drifts between runs)
        if not args.worker_only:
            values = [(m.value(), m.key()) for m in stream.messages]
            profiler = cProfile.Profile() if args.profile else None
            cpus = []
            for _ in range(args.repeat):
                processor, store = PartitionProcessor(), DictStore()
                started = time.process_time()
                if profiler:
                    profiler.enable()
                for offset, (value, key) in enumerate(values):
                    processor.process(value, key=key, partition=0, offset=offset, store=store)
                processor.checkpoint()
                if profiler:
                    profiler.disable()
                cpus.append(time.process_time() - started)
            cpu = statistics.median(cpus)
            print(
                f"pure processor: {total_events / cpu:,.0f} events/s of one core "
                f"({cpu / total_events * 1e6:.1f} us/event; "
                f"runs {', '.join(f'{c / total_events * 1e6:.1f}' for c in cpus)})"
            )
            if profiler:
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
                print(out.getvalue())

        # produce the backlog
        producer = Producer(kafka.client_config(**{"linger.ms": 50, "compression.type": "lz4"}))
        topic = kafka.topic_name(event_format.EVENTS_TOPIC)
        for m in stream.messages:
            extra = {"partition": m.partition} if m.partition is not None else {}
            while True:
                try:
                    producer.produce(topic, m.value(), m.key(), **extra)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.flush(60)

        # 2. baseline: a Quix app that only consumes
        child_env = {**os.environ, **env}
        base_seconds = 0.0
        if not args.worker_only:
            base = subprocess.Popen(
                [sys.executable, __file__, "--baseline", topic, str(len(stream.messages)), "bench-baseline"],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=ROOT,
            )
            out_text, _ = base.communicate(timeout=600)
            line = next(ln for ln in out_text.decode().splitlines() if ln.startswith("BASELINE"))
            base_seconds = float(line.split()[1])
            print(f"baseline (Quix consume only, 1 process): {total_events / base_seconds:,.0f} events/s")

        # 3. the worker over the backlog, --repeat times (each run: fresh consumer group and tables)
        client = client_get()
        expected = (len(stream.truth.event_ids), len(stream.truth.views))
        variant = dict(item.split("=", 1) for item in args.variant.split())
        configs = {"default": {}, **({f"variant {args.variant}": variant} if variant else {})}
        clients = {name: client for name in configs}
        for name, extra_env in configs.items():
            if extra_env.get("CLICKHOUSE_DATABASE", "bench") != "bench":
                # A schema of its own (version against version): the variant's checkout migrates it.
                database = extra_env["CLICKHOUSE_DATABASE"]
                clients[name] = client_get(database=database)
                client.execute(f"CREATE DATABASE IF NOT EXISTS `{database.replace('`', '')}`")
                checkout = Path(extra_env.get("BENCH_CHECKOUT", ROOT))
                subprocess.run(
                    [sys.executable, str(checkout / "manage.py"), "migrate", "--database", "clickhouse", "-v", "0"],
                    env={**child_env, **extra_env},
                    cwd=checkout,
                    check=True,
                )
                if extra_env.get("BENCH_DROP_VIEWS") == "1":
                    # The floor: the raw tables alone, no materialized view (what every rollup costs).
                    for (view,) in clients[name].execute(
                        "SELECT name FROM system.tables"
                        " WHERE database = currentDatabase() AND engine = 'MaterializedView'"
                    ):
                        clients[name].execute(f"DROP VIEW `{view}`")
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        previous = "default"
        for run in range(args.repeat):
            # Alternate the order, the last round ending with the default (the freshness phase's worker).
            order = list(configs) if (args.repeat - 1 - run) % 2 else list(reversed(configs))
            for name in order:
                extra_env = configs[name]
                if workers:
                    worker = workers.pop()
                    worker.send_signal(signal.SIGTERM)
                    worker.wait(60)
                    tables_truncate(clients[previous])
                previous = name
                group = f"bench-worker-{run}-{len(runs[name])}-{name.split()[0]}"
                metrics_port = processes.free_port()
                checkout = Path(extra_env.get("BENCH_CHECKOUT", ROOT))
                worker = subprocess.Popen(
                    [sys.executable, str(checkout / "manage.py"), "run_stream", "--metrics-port", str(metrics_port)],
                    env={**child_env, **extra_env, "STREAMS_CONSUMER_GROUP": group},
                    stdout=open(tmp / f"worker-{group}.log", "wb"),  # noqa: SIM115
                    stderr=subprocess.STDOUT,
                    cwd=checkout,
                )
                workers.append(worker)
                print(f"  {name} run {run + 1}:")
                runs[name].append(
                    worker_measure(
                        worker,
                        metrics_port,
                        clients[name],
                        expected,
                        total_events,
                        clickhouse.process.pid,
                        broker.process.pid,
                    )
                )
                print(f"  {name} run {run + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in runs[name][-1].items()))
        medians = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
        median = medians["default"]
        capacity = 1e6 / median["steady_cpu_us"]
        services = median["clickhouse_us"] + median["broker_us"]
        baseline = (
            f"; ratio to baseline {median['events_per_s'] / (total_events / base_seconds):.2f}" if base_seconds else ""
        )
        print(
            f"worker (1 process, median of {args.repeat}): {median['events_per_s']:,.0f} events/s including start "
            f"and group join; {median['steady_events_per_s']:,.0f} events/s processing (10% to 90% of the events); "
            f"{median['cpu_us']:.1f} CPU-us/event ({median['steady_cpu_us']:.1f} between 10% and 90%){baseline}"
        )
        print(
            f"  worker capacity on a core of its own: {capacity:,.0f} events/s "
            f"(1 / CPU per event between 10% and 90%); peak RSS {median['peak_rss_mb']:.0f} MiB"
        )
        print(
            f"  co-located services per event: ClickHouse server {median['clickhouse_us']:.1f} CPU-us "
            f"({median['clickhouse_settled_us']:.1f} until its merges settled, "
            f"merges {median['merge_cpu_us']:.1f}), broker "
            f"{median['broker_us']:.1f} CPU-us; on this machine's {os.cpu_count()} cores they alone cap the "
            f"pipeline at {(os.cpu_count() or 1) * 1e6 / services:,.0f} events/s, and with the worker at "
            f"{(os.cpu_count() or 1) * 1e6 / (services + median['steady_cpu_us']):,.0f} events/s"
        )
        for name, other in medians.items():
            if name != "default":
                print(
                    f"{name} (median of {args.repeat}, interleaved with the default): "
                    f"{other['events_per_s']:,.0f} events/s including start "
                    f"({other['events_per_s'] / median['events_per_s']:.2f}x), {other['steady_events_per_s']:,.0f} "
                    f"processing ({other['steady_events_per_s'] / median['steady_events_per_s']:.2f}x), "
                    f"{other['steady_cpu_us']:.1f} CPU-us/event steady, ClickHouse {other['clickhouse_us']:.1f} "
                    f"({other['clickhouse_us'] / median['clickhouse_us']:.2f}x; settled "
                    f"{other['clickhouse_settled_us']:.1f}, "
                    f"{other['clickhouse_settled_us'] / median['clickhouse_settled_us']:.2f}x; "
                    f"merges {other['merge_cpu_us']:.1f}), "
                    f"broker {other['broker_us']:.1f}, peak RSS {other['peak_rss_mb']:.0f} MiB"
                )
        if args.worker_only:
            return

        # 4. freshness at a steady rate while the worker keeps running
        template = stream_generate(
            views=max(1, args.rate * args.seconds // 11), users=2000, seed=7, poison=False, batch_ms=args.batch_ms
        )
        first_seen: dict[int, float] = {}
        sent: list[tuple[int, int]] = []  # (receivedAt ms, events)
        stop = threading.Event()
        poll_client = client_get()

        def poller() -> None:
            seen_counts: dict[int, int] = {}
            while not stop.is_set():
                now = time.time()
                rows = poll_client.execute(
                    "SELECT toUnixTimestamp64Milli(received_at) r, count() FROM events "
                    "WHERE received_at >= %(since)s GROUP BY r",
                    {"since": fresh_start},
                )
                for r, c in rows:
                    if seen_counts.get(r, 0) < c:
                        first_seen.setdefault(r, now)
                        seen_counts[r] = c
                time.sleep(0.2)

        import datetime as dt

        fresh_start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        thread = threading.Thread(target=poller, daemon=True)
        thread.start()
        messages = [m for m in template.messages if m.partition is None]
        index = 0
        t_end = time.time() + args.seconds
        while time.time() < t_end and index < len(messages):
            tick_start = time.time()
            budget = args.rate // 20  # 50 ms slices
            n = 0
            requests = []
            while n < budget and index < len(messages):
                m = messages[index]
                index += 1
                now_ms = int(time.time() * 1000)
                m.received_at = now_ms
                for e in m.events:
                    e["receivedAt"] = now_ms
                    e["timestamp"] = now_ms - 1000
                requests.append(m)
                sent.append((now_ms, len(m.events)))
                n += len(m.events)
            if args.coalesce:
                requests = batches_coalesce(
                    requests, partitions=settings.KAFKA_DEFAULT_PARTITIONS, max_events=args.coalesce
                )
            for m in requests:
                extra = {"partition": m.partition} if m.partition is not None else {}
                producer.produce(topic, m.value(), m.key(), **extra)
            producer.poll(0)
            time.sleep(max(0.0, 0.05 - (time.time() - tick_start)))
        producer.flush(30)
        produced = sum(c for _, c in sent)
        wait_until = time.time() + 60
        while time.time() < wait_until:
            if all(r in first_seen for r, _ in sent[-50:]):
                break
            time.sleep(0.5)
        stop.set()
        thread.join()
        latencies: list[float] = []
        for r, c in sent:
            if r in first_seen:
                latencies.extend([first_seen[r] - r / 1000] * c)
        missing = produced - len(latencies)
        print(
            f"freshness at {produced / args.seconds:,.0f} events/s for {args.seconds} s: "
            f"p50 {percentile(latencies, 0.5):.2f} s, p95 {percentile(latencies, 0.95):.2f} s, "
            f"max {max(latencies):.2f} s ({missing} events not seen)"
        )
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                try:
                    w.wait(20)
                except subprocess.TimeoutExpired:
                    w.kill()
        clickhouse.stop()
        registry.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline":
        baseline_main(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
