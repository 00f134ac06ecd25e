"""A generated stream of playback views with known truth, for tests and the benchmark.

Each view follows a script whose QoE figures are known by construction (startup time, watch time,
rebuffers, errors, exits before start, close reason), computed here independently of
``streams.processors``. The stream then adds what real players do to a pipeline: several events per
request, events delivered a few seconds out of order (within the grace period), client retries that
re-send an event id, late events delivered minutes after their view closed, custom interaction
events, and a few poison messages. ``ticks`` (one custom event per Kafka partition far after the
end) advance every partition's watermark so that the last views close.
"""

# Scripts of views read best as one straight function each; the generator is seeded, not secret.

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from analytics_platform import event_format

TICK_TYPE = "stream.tick"


@dataclass
class Message:
    """One Kafka message of the events topic (event_format.py), plus when it is delivered.

    v1 (``version=1``): one user's request, keyed by ``user_id``. v2: a coalesced batch of a
    partition (``batches_coalesce``), no key, explicit ``partition``.
    """

    user_id: str
    received_at: int
    events: list[dict[str, Any]]
    partition: int | None = None  # forced partition (ticks, v2 batches); None: by key
    raw: bytes | None = None  # a poison payload instead of the JSON body
    version: int = event_format.MESSAGE_VERSION

    def value(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.version == event_format.BATCH_VERSION:
            return orjson.dumps({"v": self.version, "events": self.events})
        return orjson.dumps(
            {"v": self.version, "userId": self.user_id, "receivedAt": self.received_at, "events": self.events}
        )

    def key(self) -> bytes | None:
        return None if self.version == event_format.BATCH_VERSION else self.user_id.encode()


def batches_coalesce(messages: list[Message], *, partitions: int, max_events: int) -> list[Message]:
    """What the ingest coalescer makes of these requests: v2 batches of up to ``max_events`` per partition.

    Requests are taken in delivery order; a user's events go to ``partition_of(userId)``, as with a
    v1 key. Forced-partition and poison messages pass through unchanged, after what is pending for
    their partition (so the order within each partition is kept).
    """
    out: list[Message] = []
    pending: dict[int, Message] = {}

    def emit(partition: int) -> None:
        batch = pending.pop(partition, None)
        if batch is not None:
            out.append(batch)

    for message in messages:
        partition = message.partition
        if partition is None:
            partition = event_format.partition_of(message.user_id, partitions)
        if message.raw is not None or message.partition is not None:
            emit(partition)
            out.append(message)
            continue
        batch = pending.get(partition)
        if batch is None:
            batch = pending[partition] = Message(
                user_id="", received_at=0, events=[], partition=partition, version=event_format.BATCH_VERSION
            )
        batch.events.extend(message.events)
        batch.received_at = max(batch.received_at, message.received_at)
        if len(batch.events) >= max_events:
            emit(partition)
    for partition in sorted(pending):
        emit(partition)
    return out


@dataclass
class Truth:
    event_ids: set[str] = field(default_factory=set)  # every distinct valid event, late ones included
    late_ids: set[str] = field(default_factory=set)
    fatal_error_ids: set[str] = field(default_factory=set)
    error_events: int = 0
    views: dict[str, dict[str, Any]] = field(default_factory=dict)  # sessionId -> expected figures
    poison_messages: int = 0
    poison_events: int = 0
    duplicates_sent: int = 0


@dataclass
class Stream:
    messages: list[Message]
    truth: Truth
    start_ms: int
    end_ms: int


_DIMS = {
    "device": ["desktop", "mobile", "tv"],
    "os": ["linux", "ios", "android", "windows"],
    "browser": ["chrome", "safari", "firefox"],
    "country": ["FR", "US", "DE", "BR", "JP"],
    "cdn": ["cdn-a", "cdn-b"],
    "player": ["web-1.2", "ios-3.0"],
}


def _view_script(rng: random.Random, kind: str, start: int) -> tuple[list[tuple[int, str, dict[str, Any]]], dict]:
    """Events (ts, type, extra) of one view starting at ``start`` and its expected figures."""
    events: list[tuple[int, str, dict[str, Any]]] = [(start, "view_start", {"positionMs": 0})]
    t = start
    position = 0
    watch = rebuffer = rebuffer_count = errors = fatal = 0
    startup = 0
    started = start_failure = playback_failure = False
    reason = "idle"
    seeks = seek_latency = 0
    watching: list[tuple[int, int]] = []  # playing or rebuffering, [from, to)

    def play(duration: int) -> None:
        nonlocal t, position, watch
        end = t + duration
        watching.append((t, end))
        while t + 10_000 < end:
            t += 10_000
            position += 10_000
            events.append((t, "heartbeat", {"positionMs": position}))
        position += end - t
        t = end
        watch += duration

    if kind in ("exit_before_start", "start_failure"):
        t += rng.randint(500, 8_000)
        if kind == "start_failure":
            events.append((t, "error", {"errorCode": "E_MANIFEST", "errorMessage": "manifest 404", "fatal": True}))
            errors = fatal = 1
            start_failure = playback_failure = True
            if rng.random() < 0.5:
                t += 300
                events.append((t, "view_end", {}))
                reason = "view_end"
        else:
            events.append((t, "view_end", {}))
            reason = "view_end"
    else:
        startup = rng.randint(150, 4_000)
        t += startup
        started = True
        events.append((t, "playing", {"positionMs": 0, "bitrateKbps": 3000}))
        for _ in range(rng.randint(1, 4)):
            play(rng.randint(5_000, 45_000))
            roll = rng.random()
            if roll < 0.35:
                events.append((t, "rebuffer_start", {"positionMs": position}))
                duration = rng.randint(200, 6_000)
                watching.append((t, t + duration))
                t += duration
                watch += duration
                rebuffer += duration
                rebuffer_count += 1
                events.append((t, "rebuffer_end", {"positionMs": position}))
            elif roll < 0.55:
                events.append((t, "pause", {"positionMs": position}))
                t += rng.randint(1_000, 20_000)
                events.append((t, "playing", {"positionMs": position}))
            elif roll < 0.7:
                events.append((t, "seek", {"positionMs": position}))
                wait = rng.randint(100, 2_000)
                seeks += 1
                seek_latency += wait
                t += wait
                position += 30_000
                events.append((t, "playing", {"positionMs": position}))
            elif roll < 0.8:
                events.append((t, "bitrate_change", {"bitrateKbps": 1500, "positionMs": position}))
            elif roll < 0.9:
                events.append((t, "error", {"errorCode": "W_DROP", "errorMessage": "frames dropped", "fatal": False}))
                errors += 1
        play(rng.randint(2_000, 30_000))
        if kind == "playback_failure":
            events.append((t, "error", {"errorCode": "E_DECODE", "errorMessage": "decode", "fatal": True}))
            errors += 1
            fatal = 1
            playback_failure = True
        elif kind == "complete":
            events.append((t, "ended", {"positionMs": position}))
            reason = "ended"
        elif kind == "quit":
            events.append((t, "view_end", {"positionMs": position}))
            reason = "view_end"
        else:
            events.append((t, "heartbeat", {"positionMs": position}))
        # "idle": the player goes silent; the view closes 60 s after its last event
    expected = {
        "start_ts": start,
        "end_ts": t,
        "has_view_start": True,
        "started": started,
        "startup_time_ms": startup,
        "watch_time_ms": watch,
        "rebuffer_count": rebuffer_count,
        "rebuffer_duration_ms": rebuffer,
        "error_count": errors,
        "fatal_error_count": fatal,
        "start_failure": start_failure,
        "playback_failure": playback_failure,
        "exit_before_start": not started and not playback_failure,
        "close_reason": reason,
        "event_count": len(events),
        "seek_count": seeks,
        "seek_latency_ms": seek_latency,
        # The minutes (start, ms) the view spent some time playing or rebuffering: its rows of
        # ``view_minutes``, each once (concurrent viewers).
        "minutes": sorted(
            {m * 60_000 for a, b in watching if b > a for m in range(a // 60_000, (b - 1) // 60_000 + 1)}
        ),
    }
    return events, expected


_KINDS = ["complete"] * 5 + ["quit", "idle", "exit_before_start", "start_failure", "playback_failure"]


def stream_generate(
    *,
    views: int,
    users: int,
    seed: int = 1,
    start_ms: int | None = None,
    partitions: int = 8,
    duplicate_rate: float = 0.02,
    disorder_rate: float = 0.05,
    late_rate: float = 0.02,
    custom_rate: float = 0.05,
    poison: bool = True,
    batch_ms: int = 1_000,
) -> Stream:
    """Generate ``views`` views spread over ``users`` users, in delivery order, with their truth."""
    rng = random.Random(seed)
    if start_ms is None:
        # Recent enough to outlive the tables' TTLs, old enough that no event is in the future.
        start_ms = (int(time.time()) // 60 - 6 * 60) * 60_000
    truth = Truth()
    # (deliver_at, order, user, event) -- order keeps the sort stable and deterministic
    deliveries: list[tuple[int, int, str, dict[str, Any]]] = []
    order = 0
    user_clock = [start_ms + rng.randint(0, 120_000) for _ in range(users)]
    user_dims = [{k: rng.choice(v) for k, v in _DIMS.items()} for _ in range(users)]
    last_end = start_ms
    for n in range(views):
        u = n % users
        user = f"user-{seed}-{u}"
        session = str(uuid.UUID(int=rng.getrandbits(128)))
        video = f"video-{rng.randint(1, 40)}"
        kind = rng.choice(_KINDS)
        script, expected = _view_script(rng, kind, user_clock[u])
        expected.update(user_id=user, video_id=video, **user_dims[u])
        truth.views[session] = expected
        for ts, etype, extra in script:
            event = {
                "eventId": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": etype,
                "userId": user,
                "sessionId": session,
                "videoId": video,
                "timestamp": ts,
                "clientTimestamp": ts,
                **user_dims[u],
                **extra,
            }
            if etype == "error":
                truth.error_events += 1
                if extra.get("fatal"):
                    truth.fatal_error_ids.add(event["eventId"])
            truth.event_ids.add(event["eventId"])
            delay = rng.randint(0, 500)
            if rng.random() < disorder_rate and etype not in ("ended", "view_end"):
                delay += rng.randint(500, 2_500)  # out of order, well inside the 5 s grace period
            deliveries.append((ts + delay, order, user, event))
            order += 1
            if rng.random() < duplicate_rate:
                truth.duplicates_sent += 1
                deliveries.append((ts + delay + rng.randint(1_000, 30_000), order, user, event))
                order += 1
        end = script[-1][0]
        if rng.random() < custom_rate:
            event = {
                "eventId": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": "ui.share_click",
                "userId": user,
                "timestamp": end,
                "properties": {"target": "twitter"},
                **user_dims[u],
            }
            truth.event_ids.add(event["eventId"])
            deliveries.append((end + 500, order, user, event))
            order += 1
        if rng.random() < late_rate:
            # A heartbeat from inside the view delivered five minutes after the view closed.
            event = {
                "eventId": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": "heartbeat",
                "userId": user,
                "sessionId": session,
                "videoId": video,
                "timestamp": (script[0][0] + end) // 2,
                "positionMs": 1,
                **user_dims[u],
            }
            truth.event_ids.add(event["eventId"])
            truth.late_ids.add(event["eventId"])
            deliveries.append((end + 60_000 + 300_000, order, user, event))
            order += 1
        user_clock[u] = end + rng.randint(1_000, 90_000) + (60_000 if kind in ("idle", "playback_failure") else 0)
        last_end = max(last_end, end)
    deliveries.sort()
    messages: list[Message] = []
    open_batch: dict[str, Message] = {}
    for deliver_at, _, user, event in deliveries:
        message = open_batch.get(user)
        # A player sends what it has every ``batch_ms``: one request, one message per user,
        # received when its last event is ready.
        if message is None or deliver_at - message.events[0]["receivedAt"] > batch_ms:
            message = open_batch[user] = Message(user_id=user, received_at=deliver_at, events=[])
            messages.append(message)
        message.received_at = deliver_at
        message.events.append({**event, "receivedAt": deliver_at})
    for message in messages:
        for event in message.events:
            event["receivedAt"] = message.received_at
    messages.sort(key=lambda m: m.received_at)
    if poison:
        at = len(messages) // 2
        messages.insert(at, Message(user_id="user-poison", received_at=0, events=[], raw=b"{not json"))
        messages.insert(at + 1, Message(user_id="user-poison", received_at=0, events=[], raw=b'{"v": 99}'))
        truth.poison_messages = 2
        bad = {"eventId": "not-a-uuid", "type": "heartbeat", "userId": "user-poison", "timestamp": start_ms}
        messages.insert(at + 2, Message(user_id="user-poison", received_at=start_ms, events=[bad]))
        truth.poison_events = 1
    end_ms = max(m.received_at for m in messages)
    tick_at = end_ms + 600_000
    for p in range(partitions):
        event = {
            "eventId": str(uuid.UUID(int=rng.getrandbits(128))),
            "type": TICK_TYPE,
            "userId": f"tick-{seed}-{p}",
            "timestamp": tick_at,
            "receivedAt": tick_at,
        }
        truth.event_ids.add(event["eventId"])
        messages.append(Message(user_id=f"tick-{seed}-{p}", received_at=tick_at, events=[event], partition=p))
    return Stream(messages=messages, truth=truth, start_ms=start_ms, end_ms=tick_at)
