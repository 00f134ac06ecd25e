"""What Avro through the schema registry costs per event, against JSON, in one run.

    PYTHONPATH=. python bench/bench_derived_serialization.py [--events 200000] [--repeat 5]

Generates the stream of the other benchmarks (``stream_generate``), runs the pure processor over it
to get real VideoWatched and VideoError events, starts the embedded schema registry (temporary dir,
free port) and registers the topic schemas, then prints CPU-us per event and bytes per event
(median of ``--repeat``), all measured in this one process:

1. derived events (what the worker now pays per VideoWatched/VideoError):
   ``json``: ``orjson.dumps`` (the path before Avro); ``avro``: the worker's encoder
   (``streams.topic_schemas.derived_serializers``: confluent-kafka's ``AvroSerializer``, Confluent
   framing); ``avro-floor``: fastavro's ``schemaless_writer`` with the framing written by hand, the
   cost of the Avro encoding itself without the serializer's per-call overhead.
2. the raw ``events`` topic, to decide its encoding: per event, ingest's encode (``orjson``)
   against fastavro with an Avro schema of the event (free-form ``properties`` as a JSON string:
   Avro has no type for arbitrary JSON), and the worker's decode of the same events (msgspec
   decoding and checking a whole v2 message in C, ``streams.processors.decoding``) against
   fastavro's reader.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVENT_AVRO = {
    "type": "record",
    "name": "Event",
    "namespace": "bench",
    "fields": [
        {"name": "eventId", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "userId", "type": "string"},
        {"name": "timestamp", "type": "long"},
        {"name": "receivedAt", "type": "long"},
        *(
            {"name": name, "type": ["null", kind], "default": None}
            for name, kind in (
                ("clientTimestamp", "long"),
                ("sessionId", "string"),
                ("videoId", "string"),
                ("positionMs", "long"),
                ("bitrateKbps", "long"),
                ("errorCode", "string"),
                ("errorMessage", "string"),
                ("fatal", "boolean"),
                ("device", "string"),
                ("os", "string"),
                ("browser", "string"),
                ("country", "string"),
                ("cdn", "string"),
                ("player", "string"),
                ("properties", "string"),  # JSON text: Avro cannot type free-form JSON
            )
        ),
    ],
}


def per_event(run: Callable[[], int], count: int, repeat: int) -> tuple[float, int]:
    """Median CPU-us per event of ``run`` (which returns the bytes it produced) and bytes per event."""
    times, size = [], 0
    for _ in range(repeat):
        started = time.process_time()
        size = run()
        times.append(time.process_time() - started)
    return statistics.median(times) / count * 1e6, size // count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000, help="raw events generated (about 1 view per 11)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-serialization-"))
    from analytics_platform.schema_registry.testing import start_registry_process

    registry = start_registry_process(data_dir=tmp / "registry")
    os.environ.update(
        {
            "SCHEMA_REGISTRY_URL": registry.url,
            "ANALYTICS_VAR_DIR": str(tmp / "var"),
            "DJANGO_SECRET_KEY": "bench-not-secret",
            "LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "analytics_platform.settings",
        }
    )
    import django

    django.setup()
    import fastavro
    import orjson

    from streams import topic_schemas
    from streams.processors import PartitionProcessor, decoding
    from tests.support.simulate import batches_coalesce, stream_generate
    from tests.support.stores import DictStore

    try:
        views = max(1, args.events // 11)
        stream = stream_generate(views=views, users=max(10, views // 10), seed=99, poison=False, disorder_rate=0)
        processor, store = PartitionProcessor(), DictStore()
        derived: list[dict[str, Any]] = []
        for offset, message in enumerate(stream.messages):
            out = processor.process(message.value(), key=message.key(), partition=0, offset=offset, store=store)
            derived += out.video_watched + out.video_errors
        topic_schemas.schemas_register()
        encoders = topic_schemas.derived_serializers()
        by_type = {"VideoWatched": event_format_topic("video-watched"), "VideoError": event_format_topic("video-error")}
        pairs = [(encoders[by_type[e["type"]]], e) for e in derived]
        client_ids = {
            spec.topic_name: (
                spec,
                topic_schemas.kafka.schema_registry_client().lookup_schema(spec.subject, spec.schema()),
            )
            for spec in topic_schemas.DERIVED.values()
        }
        floors = {
            name: (
                fastavro.parse_schema(orjson.loads(spec.source())),
                b"\x00" + int(found.schema_id).to_bytes(4, "big"),
            )
            for name, (spec, found) in client_ids.items()
        }
        floor_pairs = [(floors[by_type[e["type"]]], e) for e in derived]

        def run_json() -> int:
            return sum(len(orjson.dumps(e)) for e in derived)

        def run_avro() -> int:
            return sum(len(encode(e)) for encode, e in pairs)

        def run_floor() -> int:
            total = 0
            for (schema, head), e in floor_pairs:
                buffer = io.BytesIO()
                buffer.write(head)
                fastavro.schemaless_writer(buffer, schema, e)
                total += buffer.tell()
            return total

        watched = sum(e["type"] == "VideoWatched" for e in derived)
        print(f"{len(derived)} derived events ({watched} VideoWatched, {len(derived) - watched} VideoError)")
        results = {
            name: per_event(run, len(derived), args.repeat)
            for name, run in (("json", run_json), ("avro", run_avro), ("avro-floor", run_floor))
        }
        base = results["json"][0]
        for name, (us, size) in results.items():
            print(f"  derived {name:<10} {us:6.2f} CPU-us/event  {size:4d} bytes/event  ({us / base:.2f}x json)")

        # 2. The raw events topic: encode at ingest, decode in the worker.
        raw = [e for m in stream.messages for e in orjson.loads(m.value())["events"]]
        event_schema = fastavro.parse_schema(EVENT_AVRO)
        avro_ready = [
            {**e, "properties": orjson.dumps(e["properties"]).decode()} if "properties" in e else e for e in raw
        ]
        avro_bodies: list[bytes] = []

        def raw_json_encode() -> int:
            return sum(len(orjson.dumps(e)) for e in raw)

        def raw_avro_encode() -> int:
            avro_bodies.clear()
            for e in avro_ready:
                buffer = io.BytesIO()
                fastavro.schemaless_writer(buffer, event_schema, e)
                avro_bodies.append(buffer.getvalue())
            return sum(map(len, avro_bodies))

        # As ingest produces them: v2 batches of up to 16 events of one partition (bench_streams.py's default).
        batches = batches_coalesce(stream.messages, partitions=8, max_events=16)
        values = [m.value() for m in batches]

        def raw_json_decode() -> int:
            for value in values:
                decoding._message_in.decode(value)
            return sum(map(len, values))

        def raw_avro_decode() -> int:
            for body in avro_bodies:
                fastavro.schemaless_reader(io.BytesIO(body), event_schema, None)
            return sum(map(len, avro_bodies))

        print(f"{len(raw)} raw events in {len(values)} messages")
        encode_json = per_event(raw_json_encode, len(raw), args.repeat)
        encode_avro = per_event(raw_avro_encode, len(raw), args.repeat)
        decode_json = per_event(raw_json_decode, len(raw), args.repeat)
        decode_avro = per_event(raw_avro_decode, len(raw), args.repeat)
        print(f"  events encode json (orjson)      {encode_json[0]:6.2f} CPU-us/event  {encode_json[1]:4d} bytes/event")
        print(
            f"  events encode avro (fastavro)    {encode_avro[0]:6.2f} CPU-us/event  {encode_avro[1]:4d} bytes/event"
            f"  ({encode_avro[0] / encode_json[0]:.1f}x json)"
        )
        print(f"  events decode json (msgspec)     {decode_json[0]:6.2f} CPU-us/event  (whole v2 messages, checked)")
        print(
            f"  events decode avro (fastavro)    {decode_avro[0]:6.2f} CPU-us/event  (unchecked)"
            f"  ({decode_avro[0] / decode_json[0]:.1f}x json)"
        )
    finally:
        registry.stop()


def event_format_topic(base: str) -> str:
    from analytics_platform import kafka

    return kafka.topic_name(base)


if __name__ == "__main__":
    main()
