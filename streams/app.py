"""Wiring of the stream worker: topics, state, the processor, the sinks, the lag gauge.

One Quix ``Application`` per process; more processes in the same consumer group split the
partitions of the ``events`` topic (they are keyed by userId, so a user's dedup and view state lives
with one partition). Per message:

``events`` (bytes) -> ``PartitionProcessor.process`` (stateful: the Quix state store of the
partition, restored from its changelog topic) -> ``Output`` -> branches:

* ``ClickHouseSink``: rows for ``events`` and ``view_summaries`` at each checkpoint (idempotent by
  source offset, see streams/sinks.py);
* ``video-watched`` / ``video-error``: the derived events (JSON, keyed by sessionId / eventId, with
  deterministic ids: at-least-once, or exactly-once when ``STREAMS_PROCESSING_GUARANTEE`` is
  ``exactly-once`` on a real Kafka cluster);
* ``events-dlq``: poison messages and events with the reason.

Checkpoints every ``STREAMS_COMMIT_INTERVAL`` seconds (5). On the local Tansu broker the local state
dir is wiped at start (``STREAMS_WIPE_STATE_ON_START``): its ListOffsets bug makes kept state crash
Quix, and the state is rebuilt from the changelog topics anyway.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from confluent_kafka import TopicCollection
from confluent_kafka.admin import AdminClient
from django.conf import settings
from prometheus_client import Counter, Gauge, start_http_server
from quixstreams import Application, message_context
from quixstreams.exceptions import QuixException
from quixstreams.kafka.configuration import ConnectionConfig

from analytics_platform import event_format, kafka
from analytics_platform.clickhouse import client_get
from streams.processors import Output, PartitionProcessor, ProcessorConfig, StateStore
from streams.sinks import ClickHouseSink

logger = logging.getLogger(__name__)

CONSUMER_LAG = Gauge(
    "streams_consumer_lag", "Messages behind the partition's high watermark", ["group", "topic", "partition"]
)
EVENTS_PROCESSED = Counter("streams_events_total", "Events processed (duplicates excluded)")
DUPLICATES = Counter("streams_duplicate_events_total", "Events dropped as duplicates of an earlier eventId")
LATE_EVENTS = Counter("streams_late_events_total", "Events that arrived after their view had closed")
DEAD_LETTERS = Counter("streams_dead_letters_total", "Messages or events sent to the dead-letter topic")


class QuixStore:
    """``StateStore`` over the Quix partition transaction of the current checkpoint."""

    def __init__(self, transaction: Any) -> None:
        self._tx = transaction

    def get(self, prefix: bytes, key: str) -> Any:
        return self._tx.get(key, prefix=prefix)

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        self._tx.set(key, value, prefix=prefix)

    def delete(self, prefix: bytes, key: str) -> None:
        self._tx.delete(key, prefix=prefix)


def _stats_to_gauge(group: str) -> Any:
    """librdkafka statistics callback: per-partition consumer lag into the Prometheus gauge."""

    exported: set[tuple[str, str]] = set()

    def on_stats(raw: str) -> None:
        stats = orjson.loads(raw)
        current: set[tuple[str, str]] = set()
        for topic, info in stats.get("topics", {}).items():
            for partition, p in info.get("partitions", {}).items():
                if partition == "-1" or p.get("fetch_state") in (None, "none", "stopped"):
                    continue
                lag = p.get("consumer_lag", -1)
                if lag >= 0:
                    CONSUMER_LAG.labels(group, topic, partition).set(lag)
                    current.add((topic, partition))
        # A partition given to another process after a rebalance is no longer this one's to report.
        for topic, partition in exported - current:
            CONSUMER_LAG.remove(group, topic, partition)
        exported.clear()
        exported.update(current)

    return on_stats


def topic_id_get(topic: str) -> str:
    """The broker's id of ``topic`` ("" when the broker has none): tells a recreated topic apart."""
    admin = AdminClient(kafka.client_config())
    description = admin.describe_topics(TopicCollection([topic]))[topic].result(30)
    return str(description.topic_id or "")


def state_dir_prepare(*, root: Path, group: str, wipe: bool) -> Path:
    """A state dir of this process's own, so that workers on one host never share RocksDB files."""
    group_dir = root / group
    if wipe and group_dir.exists():
        for child in group_dir.iterdir():
            pid = int(child.name) if child.name.isdigit() else None
            if pid is None or pid == os.getpid() or not _alive(pid):
                shutil.rmtree(child, ignore_errors=True)
    path = group_dir / str(os.getpid())
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def application_build(
    *, consumer_group: str | None = None, processing_guarantee: str | None = None
) -> tuple[Application, PartitionProcessor]:
    """The Quix application of the events worker, configured from settings."""
    group = consumer_group or settings.STREAMS_CONSUMER_GROUP
    state_dir = state_dir_prepare(
        root=Path(settings.STREAMS_STATE_DIR), group=group, wipe=settings.STREAMS_WIPE_STATE_ON_START
    )
    app = Application(
        broker_address=ConnectionConfig.from_librdkafka_dict(kafka.client_config(), ignore_extras=True),
        consumer_group=group,
        commit_interval=settings.STREAMS_COMMIT_INTERVAL,
        processing_guarantee=cast(
            Literal["at-least-once", "exactly-once"],
            processing_guarantee or settings.STREAMS_PROCESSING_GUARANTEE,
        ),
        auto_offset_reset="earliest",
        consumer_extra_config={
            "session.timeout.ms": settings.STREAMS_SESSION_TIMEOUT_MS,
            "statistics.interval.ms": 5000,
            "stats_cb": _stats_to_gauge(group),
        },
        state_dir=state_dir,
        use_changelog_topics=True,
    )
    events = app.topic(
        kafka.topic_name(event_format.EVENTS_TOPIC), key_deserializer="bytes", value_deserializer="bytes"
    )
    watched = app.topic(kafka.topic_name(event_format.VIDEO_WATCHED_TOPIC), key_serializer="str")
    errors = app.topic(kafka.topic_name(event_format.VIDEO_ERROR_TOPIC), key_serializer="str")
    dlq = app.topic(kafka.topic_name(event_format.EVENTS_DLQ_TOPIC), key_serializer="str")

    processor = PartitionProcessor(
        ProcessorConfig(
            idle_timeout_ms=settings.STREAMS_IDLE_TIMEOUT_MS,
            grace_ms=settings.STREAMS_GRACE_MS,
            dedup_window_ms=settings.STREAMS_DEDUP_WINDOW_MS,
        )
    )

    def process(value: bytes, key: bytes | None, timestamp: int, headers: Any, state: Any) -> Output:
        context = message_context()
        # The Quix state object is bound to the message key; the processor also needs the
        # partition-wide entries and other users' state (timers), so it uses the transaction.
        store: StateStore = QuixStore(state._transaction)
        try:
            out = processor.process(value, key=key, partition=context.partition, offset=context.offset, store=store)
        except QuixException:
            raise  # the state store or the framework failing is not the message's fault: crash, restart, replay
        except Exception as exc:
            # A processor bug must not stop the partition forever. Deterministic like the rest: a
            # replay fails the same way and dead-letters the same message.
            logger.exception("processor failed; message dead-lettered", extra={"offset": context.offset})
            out = Output(partition=context.partition, offset=context.offset)
            out.dead_letters.append(
                {
                    "reason": f"processor error: {exc!r}"[:1000],
                    "partition": context.partition,
                    "offset": context.offset,
                    "key": key.decode("utf-8", "replace") if key else None,
                    "payload": value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value),
                }
            )
        EVENTS_PROCESSED.inc(len(out.events))
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.late:
            LATE_EVENTS.inc(out.late)
        if out.dead_letters:
            DEAD_LETTERS.inc(len(out.dead_letters))
        return out

    sink = ClickHouseSink(
        client_factory=lambda: client_get(compression=settings.STREAMS_CLICKHOUSE_COMPRESSION or False),
        topic_id_get=topic_id_get,
        retry_after=settings.STREAMS_SINK_RETRY_SECONDS,
        chunk_rows=settings.STREAMS_SINK_CHUNK_ROWS,
    )
    # One linear chain, no branches: Quix deep-copies (pickles) a value for every branch, which
    # cost ~10% of the worker's CPU. ``sdf.sink()`` is a terminal branch, so the sink is registered
    # and fed here the way ``sdf.sink()`` does it, and the chain goes on to the output topics.
    sdf = app.dataframe(events)
    sdf.processing_context.sink_manager.register(sink)

    def sink_add(o: Output, key: Any, timestamp: int, headers: Any) -> None:
        context = message_context()
        sink.add(o, key, timestamp, headers, context.topic, context.partition, context.offset)

    routes = {"VideoWatched": (watched, "sessionId"), "VideoError": (errors, "eventId")}

    def derived(o: Output) -> list[dict[str, Any]]:
        return [*o.video_watched, *o.video_errors, *o.dead_letters]

    def route(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> Any:
        target = routes.get(value.get("type", ""))
        return target[0] if target else dlq

    def route_key(value: dict[str, Any]) -> str:
        target = routes.get(value.get("type", ""))
        return str(value[target[1]]) if target else str(value.get("key") or "")

    sdf = sdf.apply(process, stateful=True, metadata=True)
    sdf = sdf.update(sink_add, metadata=True)
    sdf = sdf.apply(derived, expand=True)
    sdf.to_topic(route, key=route_key)
    return app, processor


def stream_run(*, metrics_port: int | None = None, consumer_group: str | None = None) -> None:
    """Run the events worker until SIGTERM/SIGINT (Quix commits the last checkpoint on the way out)."""
    port = settings.STREAMS_METRICS_PORT if metrics_port is None else metrics_port
    if port:
        start_http_server(port, addr=settings.STREAMS_METRICS_ADDR)
    app, _ = application_build(consumer_group=consumer_group)
    logger.info("stream worker starting", extra={"group": consumer_group or settings.STREAMS_CONSUMER_GROUP})
    app.run()
