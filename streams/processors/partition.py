"""The partition processor: messages of a partition in, rows and derived events out, state kept.

No Kafka or ClickHouse code lives here (Snuba-style): the Quix app (``streams/app.py``) feeds it
messages with their partition/offset and a key-value ``StateStore`` backed by the Quix state store;
tests feed it plain bytes and a dict.

Why it is shaped this way:

* **Deterministic.** The output of a message depends only on the state and the message, never on
  the wall clock or arrival timing. After a crash the state is restored as of the last committed
  offset and the same messages are replayed, so the same rows (stamped with the same source
  offsets) and the same derived events come out again; the sink skips rows it already stored.
* **Event time.** Each partition keeps a watermark: the largest event time seen, where an event's
  time counts no later than the server's receive time (a client clock in the future cannot close
  everybody's views). Views close on ``ended``/``view_end`` once the watermark has passed the end
  plus a grace period, or when the watermark is 60 s past the view's last event. Events that arrive
  out of order before the view closes are sorted by event time when the view is summarised; an
  event for a view that is already closed is *late*: stored in raw with ``late = 1`` and counted,
  never applied to the closed summary.
* **Dedup by eventId** per user (the Kafka key, so one partition owns all of a user's events):
  each user's state remembers 63-bit hashes of the ids seen, in buckets of 10 minutes of the
  client's own timestamp (a retry re-sends the same id and client timestamp), each bucket kept
  until the watermark is ``dedup_window_ms`` past when it was last touched, "when" being the later
  of the watermark and the server's receive time of the touching events: retries follow the
  receive clock, and an event's own time may be weeks old (a fresh partition whose first messages
  are a backfill has an old watermark; a retry of those events came after the watermark had
  caught up and was stored twice). A message reads and writes
  only the buckets its events fall in, so the cost does not grow with the user's history. The
  newest bucket is kept inside the user's state entry, the older ones under keys of their own
  (``_seen_load``). A user with no open view gets a timer at the expiry of that memory, which
  deletes the user's state.
* **Timers without scanning.** Idle views of users who send nothing more are closed by
  per-partition timers: a user's next deadline is kept in one of ``TIMER_BUCKETS`` state entries
  (so one message re-serialises a small bucket, not the whole index) and mirrored in an in-memory
  heap that is rebuilt from the buckets whenever the partition's offsets jump (a new assignment,
  a restart, or Quix seeking back after a sink backpressure).
* **Ticks: wall-clock progress as data.** Event time only advances with events, so on a partition
  with no further traffic a finished view would never close. The worker therefore appends a *tick*
  (``{"v": 1, "tick": <wall-clock ms>}``, see ``analytics_platform/event_format.py``) to a partition
  that has been idle for ``STREAMS_IDLE_TICK_SECONDS`` while a timer is due. A tick at ``T`` means
  "the wall clock is ``T``": it raises the watermark to ``T - grace_ms`` (never lowers it; the grace
  is the allowance for events stamped before ``T`` that are still in flight from ingest or were
  stamped by a slightly slower clock) and fires the due timers. It writes no raw row, counts as no
  event and touches no user's state directly. Because the wall-clock reading is *in the message*,
  the processor stays a pure function: a replay reads the same tick at the same offset and produces
  the same rows and derived events.
"""

from __future__ import annotations

import heapq
import zlib
from dataclasses import dataclass, field
from typing import Any

from analytics_platform import event_format as ef
from streams import dead_letters as dl
from streams.processors.decoding import PoisonError, message_rows, tick_decode
from streams.processors.rows import CLIENT_TS as _CLIENT_TS
from streams.processors.rows import FATAL as _FATAL
from streams.processors.rows import ID as _ID
from streams.processors.rows import LATE as _LATE
from streams.processors.rows import MINUTE_MS
from streams.processors.rows import RECEIVED_AT as _RECEIVED_AT
from streams.processors.rows import SESSION as _SESSION
from streams.processors.rows import TS as _TS
from streams.processors.rows import TYPE as _TYPE
from streams.processors.rows import VIDEO as _VIDEO
from streams.processors.state import StateCache, StateStore
from streams.processors.views import VIEW_ENDS, video_error, view_close, view_event_add, view_minutes_due

TIMER_BUCKETS = 256
DEDUP_BUCKET_MS = 600_000  # eventId hashes are stored per user per 10 minutes of client time
PARTITION_PREFIX = b"\x00partition"  # cannot collide with a userId key (never starts with NUL)


@dataclass(frozen=True)
class ProcessorConfig:
    idle_timeout_ms: int = 60_000
    grace_ms: int = 5_000
    dedup_window_ms: int = 24 * 3600 * 1000
    closed_memory_ms: int = 3600 * 1000  # how long a closed session id is remembered (late detection)
    # Bounds of one user's state entry, which Quix writes as one changelog message (librdkafka's
    # message.max.bytes: 1 MB by default): a client sending one endless view, thousands of views or
    # a flood of ids must not make that message unproducible, which crash-looped the worker and
    # stopped every partition. About 45 bytes per stored view event, 20 per remembered id; the
    # defaults keep an entry well under 1 MB (a 4,000-event view is 11 hours of 10 s heartbeats).
    max_view_events: int = 4_000  # a view reaching it is closed (``close_reason`` "limit")
    max_user_view_events: int = 10_000  # across a user's open views: the largest is closed
    max_open_views: int = 100  # a user's open views: the least recently active one is closed
    max_closed_sessions: int = 1_000  # closed session ids remembered for late detection
    max_bucket_ids: int = 10_000  # ids remembered per 10-minute dedup bucket; beyond, not remembered


@dataclass
class Output:
    """Everything one message produced. Rows are tuples in ``EVENT_COLUMNS``/``VIEW_COLUMNS`` order."""

    partition: int
    offset: int
    events: list[tuple[Any, ...]] = field(default_factory=list)
    views: list[tuple[Any, ...]] = field(default_factory=list)
    view_minutes: list[tuple[Any, ...]] = field(default_factory=list)  # ``VIEW_MINUTE_COLUMNS`` order
    video_watched: list[dict[str, Any]] = field(default_factory=list)
    video_errors: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    late: int = 0


def _seen_load(store: StateStore, prefix: bytes, user_state: dict[str, Any], bucket_id: int) -> set[int]:
    """The id hashes of one of the user's dedup buckets, as a set that the caller may extend.

    The newest bucket lives inside the user's state (``i``: ``[bucket, ids]``), which is written at
    every checkpoint the user is active anyway: an active user then costs one state write per
    checkpoint instead of two (each write is serialised, produced to the changelog and put in
    RocksDB). A newer bucket takes its place and the older one moves to a key of its own
    (``d<bucket>``), where the buckets of states written before ``i`` existed also are.
    ``b`` lists every bucket the user has, so a new bucket costs no lookup (a miss in RocksDB).
    """
    inline = user_state.get("i")
    if inline is not None and inline[0] == bucket_id:
        current = inline[1]
        if type(current) is not set:  # a list from the store
            current = inline[1] = set(current)
        return current
    if str(bucket_id) in user_state["b"]:
        stored = store.get(prefix, f"d{bucket_id}")
        return stored if type(stored) is set else set(stored or ())
    ids: set[int] = set()
    if inline is None or bucket_id > inline[0]:
        if inline is not None:
            store.set(prefix, f"d{inline[0]}", inline[1])
        user_state["i"] = [bucket_id, ids]
    return ids


class _PartitionTimers:
    """One partition's state cache and the in-memory mirror of its watermark and timer buckets."""

    def __init__(self, store: StateStore) -> None:
        self.cache = cache = StateCache(store)
        self.watermark: int = cache.get(PARTITION_PREFIX, "wm") or 0
        self.buckets: list[dict[str, int]] = [cache.get(PARTITION_PREFIX, f"t{i}") or {} for i in range(TIMER_BUCKETS)]
        self.heap: list[tuple[int, str]] = [(d, u) for b in self.buckets for u, d in b.items()]
        heapq.heapify(self.heap)
        self.last_offset = -2

    def bucket_of(self, prefix: bytes) -> int:
        """The timer bucket of the user whose state key prefix (the encoded userId) is ``prefix``."""
        # A stable hash (Python's str hash is salted per process).
        return zlib.crc32(prefix) % TIMER_BUCKETS


class PartitionProcessor:
    """Processes the messages of the partitions one worker owns; state lives in the given stores.

    State changes are cached per partition (``StateCache``) and reach the stores only at
    ``checkpoint()``, which the worker calls before each commit (``streams.app.StateFlushSink``)
    and tests call before they look into a store.
    """

    def __init__(self, config: ProcessorConfig | None = None, *, cache_entries: int = 150_000) -> None:
        self.config = config or ProcessorConfig()
        self.cache_entries = cache_entries
        self._timers: dict[int, _PartitionTimers] = {}
        self._forgotten: set[int] = set()  # revoked partitions, dropped at the next checkpoint

    def checkpoint(self) -> int:
        """Write every partition's cached state changes to its store; return how many entries."""
        partitions = list(self._timers.values())
        capacity = self.cache_entries // max(1, len(partitions))  # the budget is the process's
        written = sum(t.cache.flush(capacity) for t in partitions)
        forgotten, self._forgotten = self._forgotten, set()
        for partition in forgotten:
            self._timers.pop(partition, None)  # written above: nothing is lost
        return written

    def process(self, value: bytes, *, key: bytes | None, partition: int, offset: int, store: StateStore) -> Output:
        """Process one message against ``store`` (changes are cached until ``checkpoint()``)."""
        out = Output(partition=partition, offset=offset)
        timers = self._timers.get(partition)
        if timers is None or offset != timers.last_offset + 1:
            # First message here, or the offsets jumped (a new assignment, a restart, a rewind after
            # sink backpressure whose checkpoint was dropped): the stored state is the truth.
            timers = self._timers[partition] = _PartitionTimers(store)
        else:
            timers.cache.backend = store
        timers.last_offset = offset
        try:
            self._process(value, key, timers, out)
        except BaseException:
            # A failure part-way may have changed cached objects without marking them: write all of
            # it, so the store holds exactly what later messages of this process see (a replay
            # fails at the same point, leaving the same state).
            timers.cache.dirty.update(timers.cache.values)
            raise
        return out

    def _process(self, value: bytes, key: bytes | None, timers: _PartitionTimers, out: Output) -> None:
        partition, offset = out.partition, out.offset
        store = timers.cache
        try:
            tick = tick_decode(value)
        except PoisonError as exc:
            out.dead_letters.append(_message_dead_letter(exc, value, key, partition, offset))
            return
        if tick is not None:
            self._tick(timers, store, tick, out)
            return
        try:
            decoded = message_rows(value, key=key, partition=partition, offset=offset)
        except PoisonError as exc:
            out.dead_letters.append(_message_dead_letter(exc, value, key, partition, offset))
            return
        out.dead_letters = decoded.dead_letters
        replay = decoded.replay
        watermark = timers.watermark
        cfg = self.config
        late_horizon = watermark - cfg.idle_timeout_ms - cfg.grace_ms
        message_time = 0
        # (user, key prefix, state, id buckets touched, latest receive time of the user's events)
        touched: list[tuple[str, bytes, dict[str, Any], dict[int, set[int]], list[int]]] = []
        earlier: set[str] = set()  # users whose deadline this message may bring forward
        for user, rows in decoded.groups:
            prefix = user.encode()
            user_state: dict[str, Any] | None = None
            views: dict[str, Any] = {}
            closed: dict[str, int] = {}
            seen_buckets: dict[int, set[int]] = {}
            received = [0]
            for valid_row, properties, picture in rows:
                row = valid_row
                if user_state is None:
                    # Loaded at the first valid event: a group of only bad events touches no state.
                    user_state = store.get(prefix, "u") or {"views": {}, "closed": {}, "b": {}}
                    views = user_state["views"]
                    closed = user_state["closed"]
                    touched.append((user, prefix, user_state, seen_buckets, received))
                # Dedup: a retry re-sends the event with the same id and the same client timestamp
                # (its corrected timestamp may differ), so ids are kept in buckets of client time.
                bucket_id = row[_CLIENT_TS] // DEDUP_BUCKET_MS
                seen = seen_buckets.get(bucket_id)
                if seen is None:
                    seen = seen_buckets[bucket_id] = _seen_load(store, prefix, user_state, bucket_id)
                event_hash = row[_ID].int >> 65
                if event_hash in seen and not replay:  # a replay is checked against what is stored
                    out.duplicates += 1
                    continue
                if len(seen) < cfg.max_bucket_ids:  # a full bucket stops remembering (see the config)
                    seen.add(event_hash)
                ts = row[_TS]
                received_at = row[_RECEIVED_AT]
                received[0] = max(received[0], received_at)
                event_time = ts if ts < received_at else received_at
                message_time = max(message_time, event_time)
                session = row[_SESSION]
                view = views.get(session) if session else None
                late = False
                if session and view is None:
                    if session in closed or ts < late_horizon:
                        late = True
                    else:
                        if len(views) >= cfg.max_open_views:
                            oldest = min(views, key=lambda s: (views[s]["last"], s))
                            self._view_close_limit(user, views, closed, oldest, watermark, out)
                        view = views[session] = {"e": [], "u": user, "v": row[_VIDEO], "dims": [""] * 6}
                        earlier.add(user)
                if late:
                    row = (*row[:_LATE], True, *row[_LATE + 1 :])
                    out.late += 1
                out.events.append(row)
                if view is not None:
                    view_event_add(view, row, properties, picture)
                    if row[_TYPE] in VIEW_ENDS:
                        earlier.add(user)
                    stored = len(view["e"])
                    if stored >= cfg.max_view_events:
                        self._view_close_limit(user, views, closed, session, watermark, out)
                    elif stored % 256 == 0 and sum(len(v["e"]) for v in views.values()) > cfg.max_user_view_events:
                        largest = max(views, key=lambda s: (len(views[s]["e"]), s))
                        self._view_close_limit(user, views, closed, largest, watermark, out)
                if row[_FATAL]:
                    out.video_errors.append(video_error(row, view))
        # Advance the watermark, then close what is due: these users' views and other users' timers.
        if message_time > watermark:
            watermark = timers.watermark = message_time
            store.set(PARTITION_PREFIX, "wm", watermark)
        # Views that are due now are closed by the timers below: a user's armed timer is never later
        # than its earliest view deadline, so closing them here too would only repeat the work.
        settled_by = watermark - cfg.grace_ms
        for user, prefix, user_state, seen_buckets, received in touched:
            for session, view in user_state["views"].items():
                # Cheap test first: only a view with a newly settled minute is read (README "QoE
                # scores": concurrent viewers are counted while the views play, not when they close).
                settled = min(view["last"], settled_by)
                if settled - view.get("pm", 0) >= MINUTE_MS:
                    out.view_minutes += view_minutes_due(
                        session, user, view, settled=settled, partition=partition, offset=offset
                    )
            self._seen_save(store, prefix, user_state, seen_buckets, watermark, max(watermark, received[0]))
            # Only a new view or an end can bring a user's deadline forward (later events of a view
            # and a later watermark move it back): otherwise an armed timer is early enough as it
            # is, and ``_timer_set`` would find so after computing the deadline.
            if user in earlier or timers.buckets[timers.bucket_of(prefix)].get(user) is None:
                self._timer_set(timers, store, user, prefix, user_state, exact=False)
            store.set(prefix, "u", user_state)
        self._timers_fire(timers, store, watermark, out)

    def _tick(self, timers: _PartitionTimers, store: StateStore, wall_clock_ms: int, out: Output) -> None:
        """Advance the watermark to ``wall_clock_ms - grace`` (never backwards) and fire due timers."""
        target = wall_clock_ms - self.config.grace_ms
        if target <= timers.watermark:
            return  # traffic (or an earlier tick) already took the partition this far: nothing to do
        timers.watermark = target
        store.set(PARTITION_PREFIX, "wm", target)
        self._timers_fire(timers, store, target, out)

    def next_deadline(self, partition: int) -> int | None:
        """The earliest armed timer of ``partition`` (event-time ms), for the worker's ticker.

        ``None``: this process has not loaded the partition's timers (no message since the
        assignment), so it cannot tell: the ticker ticks, and the tick loads them. ``ef.TIMESTAMP_MAX_MS + 1``:
        no timer armed. May be earlier than the truth (a superseded heap entry): the tick it causes
        then finds nothing due and drops that entry. Read from another thread without a lock: the
        reads are single operations on the list and dict (atomic under the GIL) and any race only
        makes the answer early or unknown, which costs one spare tick.
        """
        timers = self._timers.get(partition)
        if timers is None:
            return None
        try:
            return timers.heap[0][0]
        except IndexError:
            return ef.TIMESTAMP_MAX_MS + 1

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's cached state and timers at the next checkpoint, once written.

        Called from the ticker's thread: dropping at once could lose changes the main thread is
        still making (or has cached, not yet written). Correctness does not depend on it (a
        partition that comes back with other offsets is reloaded from the store): it frees memory.
        """
        self._forgotten.add(partition)

    def _deadline(self, view: dict[str, Any]) -> int:
        end = view.get("end")
        if end is not None:
            return int(end) + self.config.grace_ms
        return int(view["last"]) + self.config.idle_timeout_ms

    def _views_close(self, user: str, user_state: dict[str, Any], watermark: int, out: Output) -> None:
        views = user_state["views"]
        if views:
            deadline = self._deadline
            due = [s for s, v in views.items() if deadline(v) <= watermark]
            if due:
                due.sort()
                closed_now = user_state["closed"]
                for session in due:
                    view = views.pop(session)
                    closed_now[session] = watermark
                    self._view_emit(session, user, view, out)
                while len(closed_now) > self.config.max_closed_sessions:  # oldest first (see below)
                    del closed_now[next(iter(closed_now))]
        closed: dict[str, int] = user_state["closed"]
        # Entries are added with the partition's watermark, which never decreases, so the first is
        # the oldest: when it is still within memory, all are (no rebuild of the dict per message).
        if closed and next(iter(closed.values())) < watermark - self.config.closed_memory_ms:
            horizon = watermark - self.config.closed_memory_ms
            user_state["closed"] = {s: t for s, t in closed.items() if t >= horizon}

    def _seen_save(  # noqa: PLR0917 -- the loop's locals
        self,
        store: StateStore,
        prefix: bytes,
        user_state: dict[str, Any],
        seen_buckets: dict[int, set[int]],
        watermark: int,
        touched_at: int,
    ) -> None:
        """Store the touched id buckets; drop the buckets nobody touched for ``dedup_window_ms``.

        ``user_state["b"]`` maps a bucket to when it was last touched (``touched_at``, see the
        module's docstring), least recently touched first (a touched bucket moves to the end, its
        time never below the one before it), so expiry looks at the front only.
        """
        touched: dict[str, int] = user_state["b"]
        inline = user_state.get("i")
        inline_id = inline[0] if inline is not None else None
        if seen_buckets and touched:
            # Receive times of messages from several ingest processes interleave a little.
            touched_at = max(touched_at, next(reversed(touched.values())))
        for bucket_id, ids in seen_buckets.items():
            if bucket_id != inline_id:
                store.set(prefix, f"d{bucket_id}", ids)  # a set: stored as a JSON list
            name = str(bucket_id)
            touched.pop(name, None)
            touched[name] = touched_at
        horizon = watermark - self.config.dedup_window_ms
        while touched:
            bucket_key, last = next(iter(touched.items()))
            if last >= horizon:
                break
            if inline_id is not None and bucket_key == str(inline_id):
                del user_state["i"]
                inline_id = None
            else:
                store.delete(prefix, f"d{bucket_key}")
            del touched[bucket_key]

    def _timer_set(
        self,
        timers: _PartitionTimers,
        store: StateStore,
        user: str,
        prefix: bytes,
        user_state: dict[str, Any],
        *,
        exact: bool,
    ) -> None:
        """Arm the user's timer at its earliest view deadline (no open view: when its state expires).

        After a message (``exact=False``) an armed timer that is *earlier* than needed is left as it
        is: it will fire, find nothing due, and be re-armed exactly. That saves rewriting a timer
        bucket on almost every message (a view's deadline moves with each of its events).
        """
        deadline = self._user_deadline(user_state)
        index = timers.bucket_of(prefix)
        bucket = timers.buckets[index]
        armed = bucket.get(user)
        if armed == deadline or (not exact and armed is not None and (deadline is None or armed < deadline)):
            return
        if deadline is None:
            bucket.pop(user, None)
        else:
            bucket[user] = deadline
            heapq.heappush(timers.heap, (deadline, user))
        store.set(PARTITION_PREFIX, f"t{index}", bucket)

    def _user_deadline(self, user_state: dict[str, Any]) -> int | None:
        views = user_state["views"]
        if views:
            return min(map(self._deadline, views.values()))
        # Nothing open: wake up when the dedup ids and closed-session memory have all expired, to
        # delete the user's state (users who never come back must not stay in the store forever).
        last = max([*user_state["b"].values(), *user_state["closed"].values()], default=None)
        if last is None:
            return None
        return int(last) + max(self.config.dedup_window_ms, self.config.closed_memory_ms) + 1

    def _timers_fire(self, timers: _PartitionTimers, store: StateStore, watermark: int, out: Output) -> None:
        heap = timers.heap
        while heap and heap[0][0] <= watermark:
            deadline, user = heapq.heappop(heap)
            prefix = user.encode()
            if timers.buckets[timers.bucket_of(prefix)].get(user) != deadline:
                continue  # superseded by a later deadline (lazy deletion)
            user_state = store.get(prefix, "u") or {"views": {}, "closed": {}, "b": {}}
            self._views_close(user, user_state, watermark, out)
            self._seen_save(store, prefix, user_state, {}, watermark, watermark)
            self._timer_set(timers, store, user, prefix, user_state, exact=True)
            if user_state["views"] or user_state["closed"] or user_state["b"]:
                store.set(prefix, "u", user_state)
            else:
                store.delete(prefix, "u")

    def _view_close_limit(  # noqa: PLR0917 -- the loop's locals, on a path that runs rarely
        self,
        user: str,
        views: dict[str, Any],
        closed: dict[str, int],
        session: str,
        watermark: int,
        out: Output,
    ) -> None:
        """Close a view now because the user's state reached a bound (``ProcessorConfig``).

        Its later events are late (stored, not applied), like those of any closed view.
        """
        view = views.pop(session)
        view["limit"] = True
        closed.pop(session, None)
        closed[session] = watermark
        while len(closed) > self.config.max_closed_sessions:
            del closed[next(iter(closed))]
        self._view_emit(session, user, view, out)

    def _view_emit(self, session: str, user: str, view: dict[str, Any], out: Output) -> None:
        row, watched, minutes = view_close(session, user, view, partition=out.partition, offset=out.offset)
        out.views.append(row)
        out.view_minutes += minutes
        out.video_watched.append(watched)


def _message_dead_letter(
    exc: PoisonError, value: bytes, key: bytes | None, partition: int, offset: int
) -> dict[str, Any]:
    """A message refused as a whole (its envelope is unusable): the whole message, one dead letter."""
    return dl.dead_letter(
        exc.reason, exc.detail, payload=value, key=key, partition=partition, offset=offset, field=exc.field
    )
