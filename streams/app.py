"""Wiring of the stream worker: topics, state, the processor, the sinks, the lag gauge.

One Quix ``Application`` per process; more processes in the same consumer group split the
partitions of the ``events`` topic (they are keyed by userId, so a user's dedup and view state lives
with one partition). Per message:

``events`` (bytes) -> ``PartitionProcessor.process`` (stateful: the Quix state store of the
partition, restored from its changelog topic) -> ``Output`` -> branches:

* ``ClickHouseSink``: rows for ``events`` and ``view_summaries`` at each checkpoint (idempotent by
  source offset, see streams/sinks.py);
* ``video-watched`` / ``video-error``: the derived events (Avro in the Confluent wire format, with
  the schema ids the registry gave ``manage.py schemas_register``: streams/topic_schemas.py; keyed
  by userId, API.md; deterministic ids): at-least-once through ``DerivedEventsSink``, or
  exactly-once through Quix's transactional ``to_topic`` when ``STREAMS_PROCESSING_GUARANTEE`` is
  ``exactly-once`` (on a real Kafka cluster), both with the same serializers;
* ``events-dlq``: poison messages and events with the reason (the same way, JSON).

Idle partitions: an ``IdleTicker`` thread appends a tick (``processors.tick_message``) to each
assigned partition that has consumed nothing for ``STREAMS_IDLE_TICK_SECONDS`` while one of its
timers is due by the wall clock, so that finished and silent views close without further traffic.

Checkpoints every ``STREAMS_COMMIT_INTERVAL`` seconds (5). On the local Tansu broker the local state
dir is wiped at start (``STREAMS_WIPE_STATE_ON_START``): its ListOffsets bug makes kept state crash
Quix, and the state is rebuilt from the changelog topics anyway.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import orjson
from confluent_kafka import KafkaException, Producer, TopicCollection
from confluent_kafka.admin import AdminClient
from django.conf import settings
from opentelemetry.trace import SpanKind
from prometheus_client import Counter, Gauge, start_http_server
from quixstreams import Application, message_context
from quixstreams.exceptions import QuixException
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models.serializers import Serializer
from quixstreams.sinks.base import BaseSink

from analytics_platform import event_format, kafka, tracing
from analytics_platform.clickhouse import client_get
from streams import dead_letters, topic_schemas
from streams.processors import Output, PartitionProcessor, ProcessorConfig, StateStore, state_encode, tick_message
from streams.sink_dead_letters import RejectedRowsProducer
from streams.sinks import ClickHouseSink

logger = logging.getLogger(__name__)

T = TypeVar("T")  # a topic: Quix's Topic for ``to_topic``, its name for ``DerivedEventsSink``

# Key of tick messages (they are produced to an explicit partition; the key only marks them). A
# userId never starts with NUL, so no user's message carries it.
TICK_KEY = b"\x00tick"

CONSUMER_LAG = Gauge(
    "streams_consumer_lag", "Messages behind the partition's high watermark", ["group", "topic", "partition"]
)
EVENTS_PROCESSED = Counter("streams_events_total", "Events processed (duplicates excluded)")
DUPLICATES = Counter("streams_duplicate_events_total", "Events dropped as duplicates of an earlier eventId")
LATE_EVENTS = Counter("streams_late_events_total", "Events that arrived after their view had closed")
DEAD_LETTERS = Counter(
    "streams_dead_letters_total", "Messages or events sent to the dead-letter topic", ["stage", "reason"]
)
TICKS_SENT = Counter("streams_idle_ticks_total", "Ticks produced to idle partitions so that their timers fire")
STATE_WRITES = Counter("streams_state_writes_total", "State entries written to the Quix store at checkpoints")


class QuixStore:
    """``StateStore`` over the Quix partition transaction of the current checkpoint."""

    def __init__(self, transaction: Any) -> None:
        self._tx = transaction

    def get(self, prefix: bytes, key: str) -> Any:
        return self._tx.get(key, prefix=prefix)

    def set(self, prefix: bytes, key: str, value: Any) -> None:
        # Encoded here, not by Quix, so that sets are stored as lists; Quix's ``get`` reads the
        # same JSON back, and ``set_bytes`` puts it in the changelog like ``set`` would.
        self._tx.set_bytes(key, state_encode(value), prefix=prefix)

    def delete(self, prefix: bytes, key: str) -> None:
        self._tx.delete(key, prefix=prefix)


class StateFlushSink(BaseSink):
    """Writes the processor's cached state changes into the Quix transactions at each checkpoint.

    Not a destination: a sink is the one hook Quix calls at every checkpoint before it produces the
    changelogs and commits the offsets (``Checkpoint.commit``: sinks, then changelogs, then
    offsets). Registered before the ClickHouse sink. When a checkpoint is dropped instead (sink
    backpressure), Quix rewinds the partitions and the processor, seeing the offsets jump, reloads
    their state from the store, so nothing cached from the dropped checkpoint survives.

    ``before`` runs first: the ClickHouse sink's ``handoff``, so that its last INSERT of the
    checkpoint is written while the state is flushed here, instead of after.
    """

    def __init__(self, processor: PartitionProcessor, *, before: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.processor = processor
        self.before = before

    def add(  # noqa: PLR0917 -- Quix's BaseSink.add signature
        self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int, offset: int
    ) -> None:
        raise NotImplementedError("StateFlushSink takes no records")

    def flush(self) -> None:
        if self.before is not None:
            self.before()
        STATE_WRITES.inc(self.processor.checkpoint())


def derived_target(value: dict[str, Any], routes: dict[str, tuple[T, str]], dlq: T) -> tuple[T, str]:
    """The topic and key of a derived event (by its ``type``) or, for anything else, a dead letter."""
    route = routes.get(value.get("type", ""))
    if route is None:
        return dlq, str(value.get("key") or "")
    return route[0], str(value[route[1]])


class DerivedEventsSink(BaseSink):
    """Produces the derived events and dead letters under at-least-once; waits for them at checkpoints.

    Why not ``sdf.to_topic``: Quix serializes each message through its topic objects, serves the
    producer's delivery reports with a ``poll(0)`` after every message (handing the GIL away and
    back) and runs a Python callback per delivered message: 17% of the main thread's CPU samples
    (py-spy, bench_streams.py). Here the producer reports errors only
    (``delivery.report.only.error``) and is polled every ``POLL_EVERY`` messages (librdkafka keeps
    each acknowledged message until a poll discards its report: without polls, 0.8 KB per message
    until the checkpoint), when its queue is full, and at each checkpoint, where ``flush`` waits
    until every message is acknowledged. A sink flushes before Quix commits the offsets, so a
    message lost in delivery fails the checkpoint (the worker exits, restarts and replays) instead
    of being skipped. The bytes are what ``to_topic`` sends: values through ``encoders`` (the
    topic's Avro serializer; orjson JSON for a topic without one: the dead letters), UTF-8 keys,
    the murmur2 partitioner, and the source message's timestamp and headers.

    Exactly-once needs Quix's transactional producer, so the worker keeps ``to_topic`` then.
    """

    POLL_EVERY = 1000

    def __init__(
        self,
        producer_factory: Callable[[dict[str, Any]], Any],
        routes: dict[str, tuple[str, str]],
        dlq: str,
        encoders: dict[str, Callable[[dict[str, Any]], bytes]] | None = None,
    ) -> None:
        super().__init__()
        self._routes = routes
        self._dlq = dlq
        self._encoders = encoders or {}
        self._errors: list[str] = []
        self._unpolled = 0
        self._producer = producer_factory(
            {
                "partitioner": "murmur2",  # what Quix's producer uses: the same key lands where it did
                "linger.ms": 20,
                "compression.type": "lz4",
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
            }
        )

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is not None:
            self._errors.append(f"{message.topic()}: {error}")

    def send(self, events: Any, timestamp: int, headers: Any) -> None:
        """Queue ``events`` (VideoWatched, VideoError or dead letters) for their topics."""
        produce = self._producer.produce
        encoders = self._encoders
        for event in events:
            topic, key = derived_target(event, self._routes, self._dlq)
            encode = encoders.get(topic)
            value = orjson.dumps(event) if encode is None else encode(event)
            while True:
                try:
                    produce(topic, value, key.encode(), timestamp=timestamp, headers=headers)
                    break
                except BufferError:
                    self._producer.poll(0.1)  # the local queue is full: let the broker catch up
            self._unpolled += 1
            if self._unpolled >= self.POLL_EVERY:
                self._unpolled = 0
                self._producer.poll(0)

    def add(  # noqa: PLR0917 -- Quix's BaseSink.add signature
        self, value: Any, key: Any, timestamp: int, headers: Any, topic: str, partition: int, offset: int
    ) -> None:
        raise NotImplementedError("DerivedEventsSink takes events through send()")

    def flush(self) -> None:
        undelivered = self._producer.flush(60)
        if undelivered or self._errors:
            errors, self._errors = self._errors, []
            raise KafkaException(f"derived events not delivered: {undelivered} pending, errors {errors[:5]}")


class EncoderSerializer(Serializer):
    """A Quix value serializer over one of ``topic_schemas.derived_serializers``' encoders."""

    def __init__(self, encode: Callable[[dict[str, Any]], bytes]) -> None:
        self._encode = encode

    def __call__(self, value: Any, ctx: Any) -> bytes:
        return self._encode(value)


class TimerView(Protocol):
    """What the ticker reads of the processor (``PartitionProcessor`` implements it)."""

    def next_deadline(self, partition: int) -> int | None: ...

    def forget(self, partition: int) -> None: ...


class IdleTicker:
    """Appends ticks to the idle partitions this process owns, so that their timers fire.

    Why a thread and a message rather than a wall-clock check inside the processor: the processor
    must stay a pure function of (state, message) for exact replays, so the wall-clock reading has
    to enter through the log. Why not Quix: quixstreams 3.28 has no wall-clock punctuation for
    ``StreamingDataFrame.apply`` (its windows also advance on event time only).

    A partition gets a tick when all of these hold: it is assigned here (librdkafka statistics,
    refreshed every 5 s); nothing was consumed from it for ``idle_seconds`` (a busy partition's own
    events advance its watermark); its earliest timer is due at ``now - grace`` or unknown (after an
    assignment, before the first message); and no tick of ours to it is still unconsumed (at most one
    in flight, re-sent after ``resend_seconds`` in case it was lost). So a quiet partition gets about
    one tick per view to close, not one every few seconds forever.

    ``note_message`` and ``assignment_set`` are called by the consumer thread; ``run`` is the
    ticker's own thread. The shared dicts are only assigned item by item (atomic under the GIL).
    """

    def __init__(
        self,
        *,
        topic: str,
        processor: TimerView,
        idle_seconds: float,
        grace_ms: int,
        producer_factory: Callable[[], Any],
        resend_seconds: float = 30.0,
    ) -> None:
        self.topic = topic
        self.processor = processor
        self.idle_seconds = idle_seconds
        self.grace_ms = grace_ms
        self.resend_seconds = max(resend_seconds, idle_seconds)
        self._producer_factory = producer_factory
        self._assigned: frozenset[int] = frozenset()
        self._last_message: dict[int, float] = {}  # partition -> monotonic time of its last consumed message
        self._in_flight: dict[int, float] = {}  # partition -> monotonic time our unconsumed tick was sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note_message(self, partition: int, *, tick: bool) -> None:
        now = time.monotonic()
        self._last_message[partition] = now
        if tick:
            self._in_flight.pop(partition, None)

    def assignment_set(self, partitions: frozenset[int]) -> None:
        """The partitions of the events topic assigned here; drops timers of the revoked ones."""
        for partition in self._assigned - partitions:
            self.processor.forget(partition)
            self._in_flight.pop(partition, None)
        for partition in partitions - self._assigned:
            self._last_message.setdefault(partition, time.monotonic())
        self._assigned = partitions

    def due(self, now_monotonic: float, now_ms: int) -> list[int]:
        """The partitions that need a tick now."""
        result = []
        for partition in sorted(self._assigned):
            if now_monotonic - self._last_message.get(partition, now_monotonic) < self.idle_seconds:
                continue
            sent = self._in_flight.get(partition)
            if sent is not None and now_monotonic - sent < self.resend_seconds:
                continue
            deadline = self.processor.next_deadline(partition)
            if deadline is not None and deadline > now_ms - self.grace_ms:
                continue
            result.append(partition)
        return result

    def run(self) -> None:
        producer = self._producer_factory()
        interval = max(0.2, min(1.0, self.idle_seconds / 2))
        while not self._stop.wait(interval):
            try:
                self._tick_due(producer)
            except Exception:
                # A failing ticker only delays idle closes; it must not die silently or stop the worker.
                logger.exception("idle ticker failed; retrying")
        producer.flush(5)

    def _tick_due(self, producer: Any) -> None:
        now_ms = int(time.time() * 1000)
        for partition in self.due(time.monotonic(), now_ms):
            try:
                producer.produce(self.topic, tick_message(now_ms), TICK_KEY, partition=partition)
            except (BufferError, KafkaException) as exc:
                logger.warning("tick not produced", extra={"partition": partition, "error": str(exc)})
                continue
            self._in_flight[partition] = time.monotonic()
            TICKS_SENT.inc()
        producer.poll(0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="idle-ticker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


def _stats_to_gauge(group: str, on_assigned: Callable[[dict[str, frozenset[int]]], None] | None = None) -> Any:
    """librdkafka statistics callback: per-partition consumer lag into the Prometheus gauge.

    ``on_assigned`` also gets the partitions being fetched, per topic (the ticker's view of the
    assignment, refreshed with each statistics report; Quix has no public assignment hook).
    """

    exported: set[tuple[str, str]] = set()

    def on_stats(raw: str) -> None:
        stats = orjson.loads(raw)
        current: set[tuple[str, str]] = set()
        assigned: dict[str, frozenset[int]] = {}
        for topic, info in stats.get("topics", {}).items():
            fetching: set[int] = set()
            for partition, p in info.get("partitions", {}).items():
                if partition == "-1" or p.get("fetch_state") in (None, "none", "stopped"):
                    continue
                fetching.add(int(partition))
                lag = p.get("consumer_lag", -1)
                if lag >= 0:
                    CONSUMER_LAG.labels(group, topic, partition).set(lag)
                    current.add((topic, partition))
            assigned[topic] = frozenset(fetching)
        # A partition given to another process after a rebalance is no longer this one's to report.
        for topic, partition in exported - current:
            CONSUMER_LAG.remove(group, topic, partition)
        exported.clear()
        exported.update(current)
        if on_assigned is not None:
            on_assigned(assigned)

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


def _rejected_rows_producer(dlq_topic: str) -> RejectedRowsProducer:
    """The ClickHouse sink's own dead-letter producer, for the rows ClickHouse refuses.

    Its own (not ``DerivedEventsSink``'s): it is used from the sink's writer threads and waits for
    acknowledgements mid-checkpoint (streams/sink_dead_letters.py), in either processing guarantee.
    """
    return RejectedRowsProducer(
        Producer(kafka.client_config(**{"acks": "all", "linger.ms": 5})),
        dlq_topic,
        on_sent=lambda record: DEAD_LETTERS.labels(record["stage"], record["reason"]).inc(),
    )


def worker_build(
    *, consumer_group: str | None = None, processing_guarantee: str | None = None
) -> tuple[Application, PartitionProcessor, IdleTicker | None]:
    """The Quix application, its processor and its idle ticker (None when ticks are off)."""
    group = consumer_group or settings.STREAMS_CONSUMER_GROUP
    events_topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    processor = PartitionProcessor(
        ProcessorConfig(
            idle_timeout_ms=settings.STREAMS_IDLE_TIMEOUT_MS,
            grace_ms=settings.STREAMS_GRACE_MS,
            dedup_window_ms=settings.STREAMS_DEDUP_WINDOW_MS,
        ),
        cache_entries=settings.STREAMS_STATE_CACHE_ENTRIES,
    )
    ticker: IdleTicker | None = None
    if settings.STREAMS_IDLE_TICK_SECONDS > 0:
        ticker = IdleTicker(
            topic=events_topic,
            processor=processor,
            idle_seconds=settings.STREAMS_IDLE_TICK_SECONDS,
            grace_ms=settings.STREAMS_GRACE_MS,
            producer_factory=lambda: Producer(kafka.client_config(**{"linger.ms": 0, "acks": "all"})),
        )

    def on_assigned(assigned: dict[str, frozenset[int]]) -> None:
        if ticker is not None:
            ticker.assignment_set(assigned.get(events_topic, frozenset()))

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
            "stats_cb": _stats_to_gauge(group, on_assigned),
        },
        # Changelogs and derived events leave in bursts (state at each checkpoint, VideoWatched as
        # views close): fewer, compressed produce requests cost the broker less per message.
        producer_extra_config={"linger.ms": 20, "compression.type": "lz4"},
        state_dir=state_dir,
        use_changelog_topics=True,
        # Quix would install its own text handler; None leaves its records to the JSON logging.
        loglevel=None,
    )
    events = app.topic(events_topic, key_deserializer="bytes", value_deserializer="bytes")
    # Looked up in the registry now: a worker whose schemas are not registered does not start.
    encoders = topic_schemas.derived_serializers()
    watched_name = kafka.topic_name(event_format.VIDEO_WATCHED_TOPIC)
    errors_name = kafka.topic_name(event_format.VIDEO_ERROR_TOPIC)
    watched = app.topic(watched_name, key_serializer="str", value_serializer=EncoderSerializer(encoders[watched_name]))
    errors = app.topic(errors_name, key_serializer="str", value_serializer=EncoderSerializer(encoders[errors_name]))
    dlq = app.topic(kafka.topic_name(event_format.EVENTS_DLQ_TOPIC), key_serializer="str")

    sink = ClickHouseSink(
        client_factory=lambda: client_get(compression=settings.STREAMS_CLICKHOUSE_COMPRESSION or False),
        topic_id_get=topic_id_get,
        retry_after=settings.STREAMS_SINK_RETRY_SECONDS,
        chunk_rows=settings.STREAMS_SINK_CHUNK_ROWS,
        chunk_seconds=settings.STREAMS_SINK_CHUNK_SECONDS,
        commit_interval=settings.STREAMS_COMMIT_INTERVAL,
        rejected_rows=_rejected_rows_producer(dlq.name),
        partitions_per_insert=settings.STREAMS_SINK_PARTITIONS_PER_INSERT,
    )
    sdf = app.dataframe(events)
    guarantee = processing_guarantee or settings.STREAMS_PROCESSING_GUARANTEE
    routes = {"VideoWatched": (watched, "userId"), "VideoError": (errors, "userId")}  # API.md: keyed by userId
    derived: DerivedEventsSink | None = None
    if guarantee == "at-least-once":
        derived = DerivedEventsSink(
            lambda extra: Producer(kafka.client_config(**extra)),
            {event_type: (topic.name, key) for event_type, (topic, key) in routes.items()},
            dlq.name,
            encoders,
        )
    # Sinks flush in registration order at each checkpoint, all before Quix produces the changelogs
    # and commits: the processor's cached state goes into the transactions first.
    sdf.processing_context.sink_manager.register(StateFlushSink(processor, before=sink.handoff))
    sdf.processing_context.sink_manager.register(sink)
    if derived is not None:
        sdf.processing_context.sink_manager.register(derived)
    no_derived: tuple[dict[str, Any], ...] = ()

    def process(value: bytes, key: bytes | None, timestamp: int, headers: Any, state: Any) -> Any:
        """``process_message``, in a span that continues the producer's trace when it was sampled."""
        if not tracing.ENABLED or not tracing.headers_sampled(headers):
            return process_message(value, key, timestamp, headers, state)
        context = message_context()
        parent = tracing.headers_extract(headers)
        span = tracing.tracer.start_span(
            f"process {events_topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": events_topic,
                "messaging.destination.partition.id": str(context.partition),
                "messaging.kafka.offset": context.offset,
                "messaging.consumer.group.name": group,
            },
        )
        # What start_as_current_span does, without its two context-manager layers (per message).
        with tracing.CurrentSpan(span, parent):
            return process_message(value, key, timestamp, headers, state)

    def process_message(value: bytes, key: bytes | None, timestamp: int, headers: Any, state: Any) -> Any:
        """Process one message, hand its rows to the sink, return its derived events (expanded).

        One step of the dataframe does it all: each further step costs per message, and Quix
        deep-copies (pickles) a value for every branch, so the sink is fed here the way
        ``sdf.sink()`` would, rather than from a branch.
        """
        context = message_context()
        partition, offset = context.partition, context.offset
        # The Quix state object is bound to the message key; the processor also needs the
        # partition-wide entries and other users' state (timers), so it uses the transaction.
        store: StateStore = QuixStore(state._transaction)
        try:
            out = processor.process(value, key=key, partition=partition, offset=offset, store=store)
        except QuixException:
            raise  # the state store or the framework failing is not the message's fault: crash, restart, replay
        except Exception as exc:
            # A processor bug must not stop the partition forever. Deterministic like the rest: a
            # replay fails the same way and dead-letters the same message.
            logger.exception("processor failed; message dead-lettered", extra={"offset": offset})
            out = Output(partition=partition, offset=offset)
            out.dead_letters.append(
                dead_letters.dead_letter(
                    dead_letters.PROCESSOR_ERROR,
                    f"processor error: {exc!r}",
                    payload=value if isinstance(value, bytes) else repr(value).encode(),
                    key=key,
                    partition=partition,
                    offset=offset,
                )
            )
        # Every offset reaches the sink, rows or not: it tracks contiguous offsets per partition.
        sink.add(out, key, timestamp, headers, events_topic, partition, offset)
        if ticker is not None:
            ticker.note_message(partition, tick=key == TICK_KEY)
        if out.events:
            EVENTS_PROCESSED.inc(len(out.events))
        if out.duplicates:
            DUPLICATES.inc(out.duplicates)
        if out.late:
            LATE_EVENTS.inc(out.late)
        for letter in out.dead_letters:
            DEAD_LETTERS.labels(letter["stage"], letter["reason"]).inc()
        if out.video_watched or out.video_errors or out.dead_letters:
            if derived is None:
                return [*out.video_watched, *out.video_errors, *out.dead_letters]
            derived.send(out.video_watched, timestamp, headers)
            derived.send(out.video_errors, timestamp, headers)
            derived.send(out.dead_letters, timestamp, headers)
        return no_derived

    def route(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> Any:
        return derived_target(value, routes, dlq)[0]

    def route_key(value: dict[str, Any]) -> str:
        return derived_target(value, routes, dlq)[1]

    sdf = sdf.apply(process, stateful=True, metadata=True, expand=True)
    if derived is None:
        sdf.to_topic(route, key=route_key)
    return app, processor, ticker


# Collections: after the young generation has seen this many more allocations than frees (CPython's
# default is 700), then every 50 young and every 1,000 middle collections (10 and 10 by default).
# 1M rather than 50k: a row lives until its chunk is written (1-5 s, 40k-200k events), and with a
# pass every few thousand events each one was walked twice, in the young and the middle generation,
# before being freed. bench_streams.py, 1M-event backlog, interleaved runs: 21.4 against 22.6 and
# 21.5 against 23.3 CPU-us per event; the worker's peak RSS 909 MiB against 902 MiB.
GC_THRESHOLDS = (1_000_000, 50, 1_000)


def gc_tune() -> None:
    """Fewer cyclic-GC passes for the worker: the processor allocates a few objects per event.

    The default thresholds ran a young-generation pass every 700 net allocations and an older one
    every ten of those, each walking objects that never become garbage (the state cache, Quix and
    Django internals); measured in ``bench/bench_streams.py``: decoding a message cost 9.3 CPU-us
    per event in the worker against 3.2 in a bare process, 4.2 with this. ``freeze`` moves what
    start-up allocated out of every future pass. The processor makes few reference cycles, so
    collecting them later costs little memory.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def stream_run(*, metrics_port: int | None = None, consumer_group: str | None = None) -> None:
    """Run the events worker until SIGTERM/SIGINT (Quix commits the last checkpoint on the way out)."""
    port = settings.STREAMS_METRICS_PORT if metrics_port is None else metrics_port
    if port:
        start_http_server(port, addr=settings.STREAMS_METRICS_ADDR)
    app, _, ticker = worker_build(consumer_group=consumer_group)
    gc_tune()
    logger.info("stream worker starting", extra={"group": consumer_group or settings.STREAMS_CONSUMER_GROUP})
    if ticker is not None:
        ticker.start()
    try:
        app.run()
    finally:
        if ticker is not None:
            ticker.stop()
