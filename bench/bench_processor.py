"""The pure stream processor's cost per event, with checkpoints as often as the worker makes them.

    PYTHONPATH=. python bench/bench_processor.py [--events 300000] [--checkpoint-every 7500] [--repeat 3]
    PYTHONPATH=. python bench/bench_processor.py --events 100000 --checkpoint-every 750 --callgrind

Generates the stream of ``bench_streams.py`` (v2 batches of up to 16 events, one per partition of
the events topic), runs ``PartitionProcessor`` over it in this process with one ``DictStore`` per
partition, calls ``checkpoint()`` every ``--checkpoint-every`` messages (7,500 messages is about
5 s of a worker at 25,000 events/s) and prints: CPU per event (median of ``--repeat``), the part
spent in checkpoints, and the state writes and serialised state bytes per event. Each of those
writes costs the worker more than here: Quix serialises it, produces it to the changelog topic and
puts it in RocksDB.

``--callgrind`` runs this script twice under ``valgrind --tool=callgrind`` (once processing, once
only generating the stream) and prints the instructions per event of the processing. Unlike CPU
time, the count does not drift with a shared machine's speed: run it in two checkouts to compare
two versions of the processor. Needs valgrind (Debian package ``valgrind``); slow: 4 minutes for
30,000 events on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

T0 = 1_780_000_000_000  # a fixed start: the same stream, hence the same work, in every run


def messages_make(events: int) -> tuple[list[tuple[bytes, bytes | None, int]], int]:
    """(value, key, partition) of the benchmark stream's messages, and how many events they hold."""
    from django.conf import settings

    from analytics_platform import event_format
    from tests.support.simulate import batches_coalesce, stream_generate

    views = max(1, events // 11)
    stream = stream_generate(
        views=views, users=max(10, views // 10), seed=99, poison=False, batch_ms=10_000, disorder_rate=0, start_ms=T0
    )
    total = sum(len(m.events) for m in stream.messages)
    partitions = settings.KAFKA_DEFAULT_PARTITIONS
    coalesced = batches_coalesce(stream.messages, partitions=partitions, max_events=16)
    out = []
    for m in coalesced:
        partition = m.partition if m.partition is not None else event_format.partition_of(m.user_id, partitions)
        out.append((m.value(), m.key(), partition))
    return out, total


def run(messages: list[tuple[bytes, bytes | None, int]], checkpoint_every: int) -> dict[str, float]:
    """One pass over ``messages``: CPU seconds (all, checkpoints), state writes and their bytes."""
    from streams.processors import PartitionProcessor, state_encode
    from tests.support.stores import DictStore

    class CountingStore(DictStore):
        writes = 0
        written_bytes = 0

        def set(self, prefix: bytes, key: str, value: Any) -> None:
            encoded = state_encode(value)
            CountingStore.writes += 1
            CountingStore.written_bytes += len(encoded)
            self.data[(prefix, key)] = encoded

    CountingStore.writes = CountingStore.written_bytes = 0
    processor = PartitionProcessor()
    stores: dict[int, CountingStore] = {}
    offsets: dict[int, int] = {}
    checkpoint_cpu = 0.0
    started = time.process_time()
    for index, (value, key, partition) in enumerate(messages, 1):
        store = stores.get(partition)
        if store is None:
            store = stores[partition] = CountingStore()
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        processor.process(value, key=key, partition=partition, offset=offset, store=store)
        if index % checkpoint_every == 0:
            before = time.process_time()
            processor.checkpoint()
            checkpoint_cpu += time.process_time() - before
    before = time.process_time()
    processor.checkpoint()
    checkpoint_cpu += time.process_time() - before
    return {
        "cpu": time.process_time() - started,
        "checkpoint_cpu": checkpoint_cpu,
        "writes": CountingStore.writes,
        "bytes": CountingStore.written_bytes,
    }


def callgrind(args: argparse.Namespace) -> None:
    """Instructions per event of the processing: a run under callgrind minus a start-up-only run."""
    counts = {}
    with tempfile.TemporaryDirectory(prefix="bench-processor-") as tmp:
        for name, extra in (("processing", []), ("start-up", ["--setup-only"])):
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/{name}.out",
                sys.executable,
                __file__,
                "--events",
                str(args.events),
                "--checkpoint-every",
                str(args.checkpoint_every),
                "--repeat",
                "1",
                *extra,
            ]
            result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            match = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
            if match is None:
                raise SystemExit(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
            counts[name] = int(match.group(1).replace(",", ""))
            events = re.search(r"events (\d+)", result.stdout)
            if events:
                counts["events"] = int(events.group(1))
    processing = counts["processing"] - counts["start-up"]
    print(
        f"callgrind: {processing / counts['events']:,.0f} instructions per event "
        f"({processing:,} for {counts['events']:,} events; start-up {counts['start-up']:,} subtracted)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--checkpoint-every", type=int, default=7_500, help="messages between checkpoints")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead (needs valgrind)")
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)  # the callgrind baseline
    args = parser.parse_args()
    if args.callgrind:
        callgrind(args)
        return

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-not-secret")
    import django

    django.setup()
    messages, total = messages_make(args.events)
    print(f"events {total} in {len(messages)} messages, a checkpoint every {args.checkpoint_every} messages")
    if args.setup_only:
        return
    runs = [run(messages, args.checkpoint_every) for _ in range(args.repeat)]
    cpu = statistics.median(r["cpu"] for r in runs)
    checkpoint_cpu = statistics.median(r["checkpoint_cpu"] for r in runs)
    print(
        f"pure processor: {cpu / total * 1e6:.2f} CPU-us per event (runs "
        + ", ".join(f"{r['cpu'] / total * 1e6:.2f}" for r in runs)
        + f"), of which checkpoints {checkpoint_cpu / total * 1e6:.2f}; "
        f"state writes per event {runs[0]['writes'] / total:.3f}, state bytes per event {runs[0]['bytes'] / total:.0f}"
    )


if __name__ == "__main__":
    main()
