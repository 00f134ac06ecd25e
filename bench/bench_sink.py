"""Cost of the stream worker's ClickHouse writes: client CPU, server CPU and wall time per row.

    PYTHONPATH=. python bench/bench_sink.py [--events 100000] [--repeat 3] [--profile-server]

Generates real ``events`` and ``view_summaries`` rows (``stream_generate`` through
``PartitionProcessor``, as bench_streams.py does), starts the embedded ClickHouse server, runs the
project's migrations (so every materialized view exists) and then measures, median of
``--repeat`` runs:

(a) client: CPU-µs/row of this process while ``ClickHouseSink.add`` + ``flush`` write all rows
    (the writer thread's serialisation; the main thread only waits), for each insert path:
    ``native`` -- clickhouse-driver's columnar INSERT with Native Data packets (the path before
    the JSON change, kept here as the baseline), and ``json`` -- the sink's current path;
(b) server: wall seconds and the server process's CPU-µs/row for the same inserts, into the
    migrated database (all materialized views) and into a copy of the two tables without views;
(c) baseline: the same rows inserted directly into chdb in this process (the same schema copied
    from the server), as ``FORMAT Native`` from a file (what the server's spool does) and as
    inline ``FORMAT JSONCompactColumns``;
(d) both (b) and (c) with and without the materialized views.

``--profile-server`` records the server with py-spy during one native and one JSON run
(``/tmp/tools/bin/py-spy``) and prints its top frames.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB = "bench"
DB_NO_MV = "bench_nomv"
TOPIC_ID = "bench-topic-id"
PY_SPY = Path("/tmp/tools/bin/py-spy")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def outputs_make(events: int) -> list[Any]:
    """Processor outputs holding about ``events`` event rows, all on partition 0."""
    from streams.processors import PartitionProcessor
    from tests.support.simulate import stream_generate
    from tests.support.stores import DictStore

    views = max(1, events // 11)
    stream = stream_generate(views=views, users=max(10, views // 10), seed=99, poison=False, batch_ms=10_000)
    processor, store = PartitionProcessor(), DictStore()
    outputs = []
    total = 0
    for offset, message in enumerate(stream.messages):
        out = processor.process(message.value(), key=message.key(), partition=0, offset=offset, store=store)
        outputs.append(out)
        total += len(out.events)
        if total >= events:
            break
    return outputs


def legacy_sink_class() -> type:
    """The sink with the insert it had before the JSON path: clickhouse-driver Native blocks."""
    from streams.sinks import ClickHouseSink

    class NativeSink(ClickHouseSink):
        def _insert(self, table: str, columns: Sequence[str], rows: list[Any], topic_id: str) -> None:
            self._client_get(table).execute(
                f"INSERT INTO {table} ({', '.join(columns)}, kafka_topic_id) VALUES",
                [*zip(*rows, strict=True), [topic_id] * len(rows)],
                columnar=True,
            )

    return NativeSink


def tables_truncate(client: Any, database: str) -> None:
    rows = client.execute(
        "SELECT name FROM system.tables WHERE database = %(d)s AND engine NOT IN ('MaterializedView', 'View')",
        {"d": database},
    )
    for (name,) in rows:
        client.execute(f"TRUNCATE TABLE `{database}`.`{name}`")


def sink_run(
    sink_class: type, outputs: list[Any], client_factory: Callable[[], Any], server_pid: int
) -> dict[str, float]:
    sink = sink_class(client_factory=client_factory, topic_id_get=lambda topic: TOPIC_ID)
    # One throwaway query per connection (one per table) so connecting is not in the timing.
    for table in ("events", "view_summaries"):
        sink._client_get(table).execute("SELECT 1")
    cpu0, wall0, server0 = time.process_time(), time.perf_counter(), cpu_seconds(server_pid)
    for out in outputs:
        sink.add(out, None, 0, None, "events", out.partition, out.offset)
    sink.flush()
    return {
        "client_cpu": time.process_time() - cpu0,
        "wall": time.perf_counter() - wall0,
        "server_cpu": cpu_seconds(server_pid) - server0,
    }


def chdb_schema(client: Any, database: str) -> list[str]:
    """CREATE statements of ``database``'s tables, then its materialized views."""
    rows = client.execute(
        "SELECT name, engine, create_table_query FROM system.tables WHERE database = %(d)s ORDER BY name",
        {"d": database},
    )
    tables = [sql for _, engine, sql in rows if engine != "MaterializedView"]
    views = [sql for _, engine, sql in rows if engine == "MaterializedView"]
    return tables + views


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile-server", action="store_true")
    args = parser.parse_args()

    from analytics_platform.devstack import processes

    tmp = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    clickhouse = processes.clickhouse_start(data_dir=tmp / "clickhouse")
    os.environ.update(
        {
            "CLICKHOUSE_HOST": clickhouse.host,
            "CLICKHOUSE_PORT": str(clickhouse.port),
            "CLICKHOUSE_PASSWORD": clickhouse.password or "",
            "CLICKHOUSE_DATABASE": DB,
            "ANALYTICS_VAR_DIR": str(tmp / "var"),
            "DJANGO_SECRET_KEY": "bench-not-secret",
            "LOG_LEVEL": "WARNING",
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command

    from analytics_platform.clickhouse import client_get, database_ensure
    from streams.sinks import ClickHouseSink

    try:
        database_ensure()
        call_command("migrate", database="clickhouse", verbosity=0)
        admin = client_get(compression=False)
        admin.execute(f"CREATE DATABASE IF NOT EXISTS {DB_NO_MV}")
        for table in ("events", "view_summaries"):
            admin.execute(f"CREATE TABLE IF NOT EXISTS {DB_NO_MV}.{table} AS {DB}.{table}")

        outputs = outputs_make(args.events)
        n_events = sum(len(o.events) for o in outputs)
        n_views = sum(len(o.views) for o in outputs)
        n_rows = n_events + n_views
        print(f"{n_events} events rows + {n_views} view rows from {len(outputs)} messages; median of {args.repeat}")

        paths: dict[str, type] = {"native (before)": legacy_sink_class(), "json (sink now)": ClickHouseSink}
        results: dict[tuple[str, str], list[dict[str, float]]] = collections.defaultdict(list)
        for _ in range(args.repeat):
            for label, sink_class in paths.items():
                for database in (DB, DB_NO_MV):
                    tables_truncate(admin, database)
                    factory = lambda database=database: client_get(database=database, compression=False)  # noqa: E731
                    results[(label, database)].append(sink_run(sink_class, outputs, factory, clickhouse.pid))
                    got = admin.execute(f"SELECT count() FROM {database}.events")[0][0]
                    assert got == n_events, (label, database, got, n_events)

        print("\n(a)+(b) through ClickHouseSink and the embedded server (per row = events + view rows)")
        print(f"{'path':<18} {'views':<7} {'client CPU µs/row':>18} {'wall s':>8} {'server CPU µs/row':>18}")
        for (label, database), runs in results.items():
            client = statistics.median(r["client_cpu"] for r in runs) / n_rows * 1e6
            wall = statistics.median(r["wall"] for r in runs)
            server = statistics.median(r["server_cpu"] for r in runs) / n_rows * 1e6
            mvs = "all" if database == DB else "none"
            print(f"{label:<18} {mvs:<7} {client:18.1f} {wall:8.2f} {server:18.1f}")
        base = statistics.median(r["client_cpu"] for r in results[("native (before)", DB)])
        now = statistics.median(r["client_cpu"] for r in results[("json (sink now)", DB)])
        base_s = statistics.median(r["server_cpu"] for r in results[("native (before)", DB)])
        now_s = statistics.median(r["server_cpu"] for r in results[("json (sink now)", DB)])
        print(f"ratio json/native: client CPU {now / base:.2f}, server CPU {now_s / base_s:.2f}")

        # (c) the same inserts in chdb in this process, same schema, with and without the views.
        schema = {database: chdb_schema(admin, database) for database in (DB, DB_NO_MV)}
        chdb_baseline(schema, outputs, n_events, n_rows, args.repeat)

        if args.profile_server and PY_SPY.exists():
            for label, sink_class in paths.items():
                server_profile(label, sink_class, outputs, clickhouse.pid, admin, client_get, tmp)
    finally:
        clickhouse.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def chdb_baseline(
    schema: dict[str, list[str]],
    outputs: list[Any],
    n_events: int,
    n_rows: int,
    repeat: int,
) -> None:
    from chdb import session as chdb_session

    from streams.processors import EVENT_COLUMNS, VIEW_COLUMNS
    from streams.sinks import json_columns_insert

    native: dict[str, bytes] = {}
    json_inline: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sink-chdb-") as tmp:
        sess = chdb_session.Session(str(Path(tmp) / "data"))
        for database, statements in schema.items():
            sess.query(f"CREATE DATABASE IF NOT EXISTS {database}")
            for sql in statements:
                sess.query(sql)
        tables = (
            ("events", EVENT_COLUMNS, [row for o in outputs for row in o.events]),
            ("view_summaries", VIEW_COLUMNS, [row for o in outputs for row in o.views]),
        )
        # The inputs, made once outside the timings: the sink's JSON text and the Native blocks
        # the server would spool (chdb's own Native export of the same rows).
        for table, columns, rows in tables:
            json_inline[table] = json_columns_insert(f"{DB}.{table}", columns, rows, TOPIC_ID)
            sess.query(json_inline[table])
            native[table] = bytes(sess.query(f"SELECT * FROM {DB}.{table}", "Native").bytes())
            files = Path(tmp) / f"{table}.native"
            files.write_bytes(native[table])
        print("\n(c) directly in chdb, in process (CPU of this process; chdb may use several threads)")
        print(f"{'format':<26} {'views':<7} {'wall s':>8} {'CPU µs/row':>11}")
        for fmt in ("Native from file", "JSONCompactColumns"):
            for database in (DB, DB_NO_MV):
                walls, cpus = [], []
                for _ in range(repeat):
                    for sql in _truncates(sess, database):
                        sess.query(sql)
                    cpu0, wall0 = time.process_time(), time.perf_counter()
                    for table, _columns, _rows in tables:
                        if fmt == "JSONCompactColumns":
                            sess.query(json_inline[table].replace(f"{DB}.{table}", f"{database}.{table}", 1))
                        else:
                            path = Path(tmp) / f"{table}.native"
                            sess.query(f"INSERT INTO {database}.{table} FROM INFILE '{path}' FORMAT Native")
                    walls.append(time.perf_counter() - wall0)
                    cpus.append(time.process_time() - cpu0)
                count = int(str(sess.query(f"SELECT count() FROM {database}.events", "CSV")).strip())
                assert count == n_events, (fmt, database, count)
                mvs = "all" if database == DB else "none"
                cpu = statistics.median(cpus) / n_rows * 1e6
                print(f"{fmt:<26} {mvs:<7} {statistics.median(walls):8.2f} {cpu:11.1f}")
        sess.close()


def _truncates(sess: Any, database: str) -> list[str]:
    text = str(
        sess.query(
            "SELECT name FROM system.tables WHERE database = "
            f"'{database}' AND engine NOT IN ('MaterializedView', 'View')",
            "CSV",
        )
    )
    return [f"TRUNCATE TABLE {database}.{line.strip(chr(34))}" for line in text.split() if line]


def server_profile(
    label: str, sink_class: type, outputs: list[Any], pid: int, admin: Any, client_get: Any, tmp: Path
) -> None:
    """py-spy the server during one run of ``sink_class`` and print its hottest frames."""
    tables_truncate(admin, DB)
    raw = tmp / f"profile-{label.split(maxsplit=1)[0]}.txt"
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(raw), "--threads"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    sink_run(sink_class, outputs, lambda: client_get(database=DB, compression=False), pid)
    time.sleep(0.5)
    spy.terminate()
    spy.wait(30)
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if "idle" in stack or not frames:
            continue
        total += int(samples)
        own[frames[-1]] += int(samples)
    print(f"\nserver py-spy, {label}: {total} samples on busy threads; top leaf frames:")
    for frame, hits in own.most_common(10):
        print(f"  {hits / max(1, total):6.1%}  {frame[:110]}")


if __name__ == "__main__":
    main()
