"""What each materialized view on ``events`` adds to an INSERT, in chdb's own CPU per raw row.

    PYTHONPATH=. python bench/bench_view_cost.py [--rows 200000] [--repeat 3]

In process (chdb, a scratch directory): the ``events`` table as ``analytics_platform.warehouse``
declares it, rows shaped like the stream worker's (random types, videos and dimension values)
encoded as the sink encodes them (``json_columns_insert``), inserted into the bare table and into
the table with one view (and its target, and the views chained on that target) at a time,
interleaved ``--repeat`` times. Prints the medians and each view's difference to the bare table:
the insert-time cost of a rollup, which ``bench/bench_streams.py`` cannot separate from the noise
of a whole pipeline (its per-table breakdown shows the merges).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")

import django  # noqa: E402

django.setup()

from chdb import session  # noqa: E402

from analytics_platform import warehouse  # noqa: E402
from streams.sinks import json_columns_insert  # noqa: E402

TYPES = ["view_start", "playing", "heartbeat", "heartbeat", "heartbeat", "pause", "seek", "error", "ended"]
VALUES = {
    "device": ["desktop", "mobile", "tv"],
    "os": ["ios", "android", "linux", "windows", "macos"],
    "browser": ["chrome", "safari", "firefox", "edge"],
    "country": ["US", "DE", "FR", "BR", "JP", "IN"],
    "cdn": ["cdn-a", "cdn-b", "cdn-c"],
    "player": ["web", "native"],
}


def rows_make(n: int, seed: int = 16) -> tuple[list[str], list[tuple[object, ...]]]:
    """``n`` rows of ``events``' columns (without ``kafka_topic_id``, which the sink adds), over a day."""
    rng = random.Random(seed)
    names = [name for name, _ in warehouse.tables()[0].columns if name != "kafka_topic_id"]
    start = int(time.time() // 86_400 * 86_400 * 1000) - 86_400_000
    out = []
    for i in range(n):
        ts = start + rng.randrange(86_400_000)
        row: dict[str, object] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "type": rng.choice(TYPES),
            "ts": ts,
            "user_id": f"u{rng.randrange(5000)}",
            "session_id": f"s{rng.randrange(20000)}",
            "video_id": f"video-{rng.randrange(500)}",
            "client_ts": ts,
            "received_at": ts + 300,
            "position_ms": rng.randrange(10**7),
            "bitrate_kbps": None,
            "error_code": "",
            "error_message": "",
            "fatal": False,
            **{dim: rng.choice(values) for dim, values in VALUES.items()},
            "properties": "{}",
            "late": False,
            "kafka_partition": rng.randrange(12),
            "kafka_offset": i,
        }
        out.append(tuple(row[name] for name in names))
    return names, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    names, rows = rows_make(args.rows)
    insert = json_columns_insert(warehouse.EVENTS, names, rows, "bench")
    statements = warehouse.statements(None, "")
    tables = {t.name: statements[i] for i, t in enumerate(warehouse.tables())}
    views = {v.name: v for v in warehouse.MATERIALIZED_VIEWS}
    ddl = dict(zip(views, statements[len(tables) :], strict=True))

    def chain(view: warehouse.MaterializedView) -> list[warehouse.MaterializedView]:
        return [view, *(c for v in views.values() if v.source == view.target for c in chain(v))]

    variants: dict[str, list[warehouse.MaterializedView]] = {"bare events": []}
    variants.update({v.name: chain(v) for v in views.values() if v.source == warehouse.EVENTS})

    with tempfile.TemporaryDirectory(prefix="bench-view-cost-") as tmp:
        db = session.Session(tmp)
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeat):
            for name, chained in variants.items():
                for table in reversed([warehouse.EVENTS, *(v.target for v in chained)]):
                    db.query(f"DROP TABLE IF EXISTS {table}")
                for view_name in views:
                    db.query(f"DROP TABLE IF EXISTS {view_name}")
                db.query(tables[warehouse.EVENTS])
                for view in chained:
                    db.query(tables[view.target])
                    db.query(ddl[view.name])
                started = time.process_time()
                db.query(insert)
                cpu[name].append((time.process_time() - started) * 1e6 / len(rows))
        db.close()
    base = statistics.median(cpu["bare events"])
    print(f"{len(rows):,} events-shaped rows per INSERT, median of {args.repeat}, chdb CPU-us per raw row")
    for name, samples in cpu.items():
        med = statistics.median(samples)
        extra = "" if name == "bare events" else f"  (+{med - base:.2f}, {len(variants[name])} view(s))"
        print(f"  {name:42} {med:6.2f}  runs {', '.join(f'{s:.2f}' for s in samples)}{extra}")


if __name__ == "__main__":
    main()
