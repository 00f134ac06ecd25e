"""Per-process coalescing of accepted events into v2 batch messages (``analytics_platform.event_format``).

Why: the stream worker pays a fixed cost per Kafka message, so the events of the concurrent
requests of one gunicorn worker are gathered per partition and produced together, one message
per partition every ``INGEST_COALESCE_MS`` (or sooner when a message would outgrow
``INGEST_MAX_MESSAGE_BYTES``). Events arrive already encoded (JSON, by each request's own
thread), so a flush, done with the lock held, only joins bytes and calls produce().

A request holds a ``Ticket``: one count per message that holds any of its events, plus one for
the submission itself, so it is released only when every such message is acknowledged, and fails
at the first message that fails. One delivery report releases (or fails) every ticket of its
message.

Ordering: buffers are sealed and produced under one lock, so the produce() calls of a partition
happen in the order its events were appended; the idempotent producer keeps that order on the
broker. A user's events of one request are appended in request order, hence stay in order.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

import structlog
from confluent_kafka import KafkaError, KafkaException, Message
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from analytics_platform import event_format, tracing
from ingest import instrumentation

if TYPE_CHECKING:
    from collections.abc import Callable

log = structlog.get_logger(__name__)

BATCH_HEAD = b'{"v":%d,"events":[' % event_format.BATCH_VERSION
BATCH_TAIL = b"]}"
BATCH_OVERHEAD = len(BATCH_HEAD) + len(BATCH_TAIL)

# One or more encoded events, comma-separated without brackets (``e1,e2``), and how many they are.
Part = tuple[bytes, int]


class Ticket:
    """One request's wait for the acknowledgement of every message holding its events."""

    __slots__ = ("_lock", "_remaining", "detail", "done", "link", "reason")

    def __init__(self, link: SpanContext | None = None) -> None:
        """``link``: the request's span, which the span of every message holding its events links to."""
        self.link = link
        self._lock = threading.Lock()
        self._remaining = 1  # the submission: nothing is released before all events are buffered
        self.done = threading.Event()
        self.reason: str | None = None
        self.detail = ""

    def hold(self) -> None:
        with self._lock:
            self._remaining += 1

    def release(self) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining > 0:
                return
        self.done.set()

    def fail(self, reason: str, detail: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
                self.detail = detail
        self.done.set()


class _Buffer:
    """The pending events of one partition: the value of the next message, still in pieces."""

    __slots__ = ("deadline", "events", "partition", "parts", "size", "tickets")

    def __init__(self, partition: int, deadline: float) -> None:
        self.partition = partition
        self.deadline = deadline
        self.parts: list[bytes] = []
        self.size = BATCH_OVERHEAD - 1  # the first part adds no comma
        self.events = 0
        self.tickets: list[Ticket] = []


class _Delivery:
    """The delivery report callback of one message: settles every ticket it holds."""

    __slots__ = ("events", "on_error", "span", "tickets")

    def __init__(self, tickets: list[Ticket], events: int, on_error: Callable[[KafkaError], None]) -> None:
        self.tickets = tickets
        self.events = events
        self.on_error = on_error
        self.span: trace.Span | None = None  # the message's send span, ended by the broker's answer

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            if self.span is not None:
                self.span.set_attribute("messaging.kafka.offset", msg.offset() or 0)
                self.span.end()
            for ticket in self.tickets:
                ticket.release()
            return
        self.fail(err.name(), f"Kafka refused the events: {err.str()}")
        self.on_error(err)

    def fail(self, reason: str, detail: str) -> None:
        instrumentation.delivery_failures.labels(reason=reason).inc()
        if self.span is not None:
            self.span.set_status(Status(StatusCode.ERROR, detail))
            self.span.set_attribute("error.type", reason)
            self.span.end()
        for ticket in self.tickets:
            ticket.fail(reason, detail)


class Produce(Protocol):
    def __call__(
        self, partition: int, value: bytes, on_delivery: _Delivery, headers: list[tuple[str, bytes]] | None
    ) -> None: ...


class Coalescer:
    """Per-partition buffers of one process, flushed by age (a background thread) or by size."""

    def __init__(self, produce: Produce, on_error: Callable[[KafkaError], None], *, topic: str = "") -> None:
        self._produce = produce
        self._topic = topic
        self._on_error = on_error
        self._cond = threading.Condition(threading.Lock())
        self._buffers: dict[int, _Buffer] = {}
        self._next_due = float("inf")  # no buffer is due before; may be early (then nothing is due)
        self._stopped = False
        self._thread = threading.Thread(target=self._flush_loop, name="ingest-coalesce", daemon=True)
        self._thread.start()

    def submit(self, ticket: Ticket, parts: dict[int, list[Part]], *, linger: float, limit: int) -> None:
        """Append a request's events (per partition, in order) to the buffers; ``ticket`` follows them.

        ``linger`` is how long a newly opened buffer waits for more events (0: produce at once);
        ``limit`` the largest message value. Every part must fit in a message on its own.
        Failures (a full producer queue) are reported through the ticket, never raised.
        """
        now = time.monotonic()
        opened = False
        touched: list[_Buffer] = []
        with self._cond:
            # Produce what is due on this thread, which holds the GIL now, rather than wait for the
            # flush thread to get it: under load it waits tens of ms for the GIL behind the request
            # threads, and the buffers grow old.
            if now >= self._next_due:
                self._seal_due(now)
            buffers = self._buffers
            for partition, partition_parts in parts.items():
                buffer = buffers.get(partition)
                for value, events in partition_parts:
                    if buffer is not None and buffer.size + 1 + len(value) > limit:
                        del buffers[partition]
                        self._seal(buffer)
                        buffer = None
                    if buffer is None:
                        buffer = buffers[partition] = _Buffer(partition, now + linger)
                        if linger > 0 and buffer.deadline < self._next_due:
                            self._next_due = buffer.deadline
                            opened = True
                    buffer.parts.append(value)
                    buffer.size += 1 + len(value)
                    buffer.events += events
                    tickets = buffer.tickets
                    if not tickets or tickets[-1] is not ticket:  # a request's parts are appended together
                        tickets.append(ticket)
                        ticket.hold()
                if buffer is not None:
                    touched.append(buffer)
            if self._stopped or linger <= 0:
                for buffer in touched:
                    if buffers.get(buffer.partition) is buffer:
                        del buffers[buffer.partition]
                        self._seal(buffer)
            elif opened:  # the flush thread may be waiting for a later deadline
                self._cond.notify()
        ticket.release()

    def _seal(self, buffer: _Buffer) -> None:
        """Produce a buffer as one message; called with the lock held, so a partition's order holds."""
        delivery = _Delivery(buffer.tickets, buffer.events, self._on_error)
        headers = self._send_span(buffer, delivery) if tracing.ENABLED else None
        try:
            self._produce(buffer.partition, BATCH_HEAD + b",".join(buffer.parts) + BATCH_TAIL, delivery, headers)
        except BufferError:
            delivery.fail("queue_full", "the Kafka producer queue is full")
            return
        except KafkaException as exc:  # e.g. a partition the producer's metadata does not know
            err = exc.args[0]
            delivery.fail(err.name(), f"Kafka refused the events: {err.str()}")
            self._on_error(err)
            return
        instrumentation.events_per_message.observe(buffer.events)

    def _send_span(self, buffer: _Buffer, delivery: _Delivery) -> list[tuple[str, bytes]] | None:
        """Start the message's send span and return the headers carrying its context.

        A root span, not the child of whichever request's thread happens to seal the buffer: the
        message holds the events of every request linked to (the messaging conventions' batch).
        """
        span = tracing.tracer.start_span(
            f"send {self._topic}",
            context=Context(),
            kind=SpanKind.PRODUCER,
            links=tracing.links_of(ticket.link for ticket in buffer.tickets),
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": self._topic,
                "messaging.destination.partition.id": str(buffer.partition),
                "messaging.batch.message_count": buffer.events,
                "analytics.requests": len(buffer.tickets),
            },
        )
        if not span.is_recording():
            # Unsampled: the worker would make no span of it (it continues sampled contexts only),
            # so the message carries no header, and its delivery report has no span to end.
            return None
        delivery.span = span
        return tracing.headers_inject(span)

    def _seal_due(self, now: float) -> None:
        """Produce every buffer due by ``now`` (lock held) and note when the next one is."""
        next_due = float("inf")
        for partition, buffer in list(self._buffers.items()):
            if buffer.deadline > now:
                next_due = min(next_due, buffer.deadline)
                continue
            del self._buffers[partition]
            try:
                self._seal(buffer)
            except Exception:  # the flush thread must survive: every later request would time out
                log.exception("ingest coalescer flush failed")
                for ticket in buffer.tickets:
                    ticket.fail("flush_failed", "the events could not be handed to Kafka")
        self._next_due = next_due

    def _flush_loop(self) -> None:
        """Produce buffers that come due while no request arrives to do it."""
        cond = self._cond
        with cond:
            while not self._stopped:
                now = time.monotonic()
                if now >= self._next_due:
                    self._seal_due(now)
                cond.wait(None if self._next_due == float("inf") else self._next_due - now)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Produce what is pending now and stop the flush thread."""
        with self._cond:
            self._stopped = True
            for buffer in list(self._buffers.values()):
                self._seal(buffer)
            self._buffers.clear()
            self._cond.notify()
        self._thread.join(1.0)
