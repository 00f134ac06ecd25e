"""Read the derived events (``video-watched``, ``video-error``) as any consumer would.

    python examples/consume_derived_events.py --bootstrap-servers 127.0.0.1:9092 \\
        --registry-url http://127.0.0.1:8081 --topic video-watched [--group my-app] \\
        [--reader-schema streams/schemas/video_watched.avsc] [--exit-when-idle 5]

Values are Avro in the Confluent wire format (magic byte 0, the 4-byte schema id, the Avro body):
confluent-kafka's ``AvroDeserializer`` fetches the writer's schema by that id from the registry
(once per id) and decodes. With ``--reader-schema`` the events are resolved into the schema this
consumer was written against, so a consumer holding an older schema keeps reading events written
with a newer, compatible one (new fields it does not know are skipped; fields it knows that the
writer lacks take their defaults).

Delivery is at least once (a worker restart re-sends what its last checkpoint had not committed),
so a consumer deduplicates by the event's ``id`` (uuid5 of the sessionId for VideoWatched, of the
eventId for VideoError): here, a bounded memory of recent ids; in a real application, the id as the
primary key of wherever the events are stored (an upsert), which needs no memory at all.

Each new event is printed as one JSON line: ``{"schemaId": ..., "key": ..., "event": {...}}``
(UUIDs as strings, timestamps as epoch milliseconds). Credentials for the registry come from
``SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO`` (``user:password``), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

SEEN_IDS_MAX = 1_000_000  # about 100 MB of ids; a view's events are never days apart


def as_json(value: Any) -> Any:
    """Avro's logical types (uuid, timestamp-millis) back into JSON values."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--registry-url", required=True)
    parser.add_argument("--topic", required=True, help="video-watched or video-error (with the deployment's prefix)")
    parser.add_argument("--group", default=f"derived-example-{uuid.uuid4().hex[:8]}")
    parser.add_argument("--reader-schema", type=Path, default=None, help="the .avsc this consumer reads into")
    parser.add_argument(
        "--exit-when-idle", type=float, default=0, help="exit after this many seconds assigned without messages"
    )
    args = parser.parse_args()

    registry_config = {"url": args.registry_url}
    if os.environ.get("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"):
        registry_config["basic.auth.user.info"] = os.environ["SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"]
    reader = args.reader_schema.read_text() if args.reader_schema else None
    deserializer = AvroDeserializer(SchemaRegistryClient(registry_config), reader)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([args.topic])
    seen: OrderedDict[str, None] = OrderedDict()
    last_message: float | None = None  # the idle clock starts once partitions are assigned
    try:
        while not args.exit_when_idle or last_message is None or time.monotonic() - last_message < args.exit_when_idle:
            message = consumer.poll(0.5)
            if last_message is None and consumer.assignment():
                last_message = time.monotonic()
            if message is None:
                continue
            if message.error():
                sys.stderr.write(f"consumer error: {message.error()}\n")
                continue
            last_message = time.monotonic()
            value = message.value()
            event = deserializer(value, SerializationContext(message.topic(), MessageField.VALUE))
            event_id = str(event["id"])
            if event_id in seen:
                continue  # a redelivery: already handled
            seen[event_id] = None
            if len(seen) > SEEN_IDS_MAX:
                seen.popitem(last=False)
            line = {
                "schemaId": int.from_bytes(value[1:5], "big"),
                "key": (message.key() or b"").decode(),
                "event": {k: as_json(v) for k, v in event.items()},
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
