"""A view's QoE figures, its ``view_summaries`` row and the derived events (API.md)."""

from __future__ import annotations

import hashlib
import operator
import uuid
from typing import Any

from streams.processors.rows import (
    BITRATE,
    DIMENSION_NAMES,
    DIMS,
    ERROR_CODE,
    ERROR_MESSAGE,
    FATAL,
    ID,
    MINUTE_MS,
    POSITION,
    SESSION,
    TS,
    TYPE,
    USER,
    VIDEO,
)

# Namespaces of the derived events' deterministic ids: the same view or error always gets the
# same id, so a consumer deduplicates replays by id.
VIDEO_WATCHED_NAMESPACE = uuid.UUID("6f1d2b1e-5b8a-4f0e-9d43-1c1f1b7a2a01")
VIDEO_ERROR_NAMESPACE = uuid.UUID("6f1d2b1e-5b8a-4f0e-9d43-1c1f1b7a2a02")
# A view's stored event: [ts, type, position, fatal, arrival seq] and, on the events where the
# player's picture changed, a sixth item: [bitrateKbps, renditionWidth, renditionHeight,
# playerWidth, playerHeight] as in effect from then on (each None while unknown).
_BY_EVENT_TIME = operator.itemgetter(0, 4)
VIEW_ENDS = frozenset(("ended", "view_end"))
_NO_PICTURE = (None, None, None, None)


def view_event_add(
    view: dict[str, Any],
    row: tuple[Any, ...],
    properties: dict[str, Any] | None,
    picture: tuple[int | None, int | None, int | None, int | None] | None = None,
) -> None:
    """Add an event (its ``events`` row) to an open view's stored events and context."""
    etype = row[TYPE]
    ts = row[TS]
    events = view["e"]
    # The arrival number breaks ties of event time; views stored before it was derived from
    # the list's length kept it in "seq", which always equalled that length.
    stored = [ts, etype, row[POSITION], row[FATAL], len(events) + 1]
    bitrate = row[BITRATE]
    if bitrate is not None or picture is not None:
        # A field an event leaves out keeps its last value. The state is stored only when it
        # changes (players repeat the same sizes on every event): the view's state entry stays
        # about as small as before, at the price that an event arriving out of order carries
        # the picture of the events that arrived before it.
        previous = view.get("q") or [None] * 5
        sent = (bitrate, *(picture or _NO_PICTURE))
        current = [new if new is not None else old for new, old in zip(sent, previous, strict=True)]
        if current != previous:
            view["q"] = current
            stored.append(current)
    events.append(stored)
    if etype == "view_start" or not view.get("s"):
        # The view's context comes from its view_start (else its first event).
        view["s"] = etype == "view_start"
        view["v"] = row[VIDEO] or view["v"]
        view["dims"] = [new or old for new, old in zip(row[DIMS], view["dims"], strict=True)]
    if etype in VIEW_ENDS:
        end = view.get("end")
        if end is None or ts > end:
            view["end"] = ts
    last = view.get("last")
    if last is None or ts > last:
        view["last"] = ts
    if properties:
        duration = properties.get("durationMs")
        if isinstance(duration, int) and not isinstance(duration, bool) and duration > 0:
            view["d"] = duration


def view_summarize(view: dict[str, Any]) -> dict[str, Any]:
    """The QoE figures of one view from its stored events (API.md definitions).

    Events are sorted by event time (arrival order breaks ties), then a player-state machine runs
    over them: the time between consecutive events counts as watch time while the state is
    ``playing`` or ``rebuffering`` (and as rebuffer time while ``rebuffering``); paused, seeking,
    stopped and not-yet-started time does not count.
    """
    events = sorted(view["e"], key=_BY_EVENT_TIME)
    # One pass: the first view_start and playing, and the first fatal error (a start failure when
    # it comes before the first playing), are noted on the way rather than found by extra scans.
    view_start = first_playing = first_fatal = None
    state = "idle"
    previous_ts = events[0][0]
    watch = rebuffer = rebuffer_count = errors = fatal_errors = 0
    max_position = 0
    ended = False
    seek_from: int | None = None  # when the seek that is being waited for began (None: not measured)
    seeks = seek_latency = 0
    picture = _Picture()
    for event in events:
        ts, etype, position, fatal = event[0], event[1], event[2], event[3]
        if state == "playing":
            watch += ts - previous_ts
            if picture.known:
                picture.add(ts - previous_ts)
        elif state == "rebuffering":
            watch += ts - previous_ts
            rebuffer += ts - previous_ts
        previous_ts = ts
        if len(event) > 5:
            picture.set(event[5])
        if position is not None and position > max_position:
            max_position = position
        if etype == "playing":
            if seek_from is not None and state == "seeking":
                seeks += 1
                seek_latency += ts - seek_from
            seek_from = None
            state = "playing"
            if first_playing is None:
                first_playing = ts
        elif etype == "heartbeat":
            pass  # the most common event: no change of state
        elif etype == "view_start":
            if view_start is None:
                view_start = ts
        elif etype == "rebuffer_start":
            if state != "rebuffering":
                rebuffer_count += 1
            state = "rebuffering"
        elif etype == "rebuffer_end":
            if state == "rebuffering":
                state = "playing"
        elif etype == "pause":
            state = "paused"
            seek_from = None  # the wait until playing again is the viewer's, not the player's
        elif etype == "seek":
            # A seek from playback is timed until playback resumes; further seeks before it (a
            # scrub) extend the same wait. A seek while paused resumes only when the viewer says.
            if state in ("playing", "rebuffering"):
                seek_from = ts
            elif state != "seeking":
                seek_from = None
            state = "seeking"
        elif etype in ("ended", "view_end"):
            state = "stopped"
            seek_from = None
            ended = ended or etype == "ended"
        elif etype == "error":
            errors += 1
            if fatal:
                fatal_errors += 1
                if first_fatal is None:
                    first_fatal = ts
                state = "stopped"
                seek_from = None
    start_ts = view_start if view_start is not None else events[0][0]
    playback_failure = first_fatal is not None
    start_failure = first_fatal is not None and (first_playing is None or first_fatal < first_playing)
    duration = view.get("d")
    if ended:
        completion: float | None = 1.0
    elif duration:
        completion = min(1.0, max_position / duration)
    else:
        completion = None
    started = first_playing is not None
    return {
        "start_ts": start_ts,
        "end_ts": events[-1][0],
        "has_view_start": view_start is not None,
        "started": started,
        "startup_time_ms": max(0, first_playing - start_ts) if started and view_start is not None else 0,
        "watch_time_ms": watch,
        "rebuffer_count": rebuffer_count,
        "rebuffer_duration_ms": rebuffer,
        "error_count": errors,
        "fatal_error_count": fatal_errors,
        "start_failure": start_failure,
        "playback_failure": playback_failure,
        "exit_before_start": not started and not playback_failure,
        "max_position_ms": max_position,
        "completion": completion,
        "event_count": len(events),
        "seek_count": seeks,
        "seek_latency_ms": seek_latency,
        **picture.figures(),
        "ended": ended,  # an ``ended`` event, not only ``view_end`` (the close reason)
    }


class _Picture:
    """Playing time weighted by the picture in effect: bitrate, and how the rendition was scaled.

    The scale of a picture is ``min(playerWidth / renditionWidth, playerHeight /
    renditionHeight)`` (the rendition fitted into the player, aspect ratio kept; over the axes
    whose both sizes are known), player sizes in device pixels. Upscaling is ``scale - 1`` when the
    scale is above 1 (a 720-line rendition in a 1440-line player: 1.0, i.e. 100 %), downscaling
    ``1 - scale`` below 1, as fractions. Only time spent ``playing`` counts (a rebuffering player
    shows no new pictures); time with an unknown bitrate or size counts in neither sum.
    """

    __slots__ = ("bitrate", "bitrate_ms", "bitrate_time", "down", "down_ms", "known", "max_bitrate", "max_down",
                 "max_up", "scale_time", "up", "up_ms")  # fmt: skip

    def __init__(self) -> None:
        self.known = False
        self.bitrate: int | None = None
        self.up: float | None = None
        self.down = 0.0
        self.bitrate_time = self.scale_time = self.max_bitrate = 0
        self.bitrate_ms = self.up_ms = self.down_ms = self.max_up = self.max_down = 0.0

    def set(self, state: list[int | None]) -> None:
        bitrate, rendition_w, rendition_h, player_w, player_h = state
        self.bitrate = bitrate
        ratios = [p / r for p, r in ((player_w, rendition_w), (player_h, rendition_h)) if p and r]
        if ratios:
            scale = min(ratios)
            self.up, self.down = max(0.0, scale - 1), max(0.0, 1 - scale)
        else:
            self.up = None
        self.known = bitrate is not None or self.up is not None

    def add(self, duration: int) -> None:
        if duration <= 0:
            return
        if self.bitrate is not None:
            self.bitrate_time += duration
            self.bitrate_ms += duration * self.bitrate
            self.max_bitrate = max(self.max_bitrate, self.bitrate)
        if self.up is not None:
            self.scale_time += duration
            self.up_ms += duration * self.up
            self.down_ms += duration * self.down
            self.max_up = max(self.max_up, self.up)
            self.max_down = max(self.max_down, self.down)

    def figures(self) -> dict[str, Any]:
        return {
            "bitrate_time_ms": self.bitrate_time,
            "bitrate_kbps_ms": self.bitrate_ms,
            "max_bitrate_kbps": self.max_bitrate,
            "scale_time_ms": self.scale_time,
            "upscale_ms": self.up_ms,
            "downscale_ms": self.down_ms,
            "max_upscale": self.max_up,
            "max_downscale": self.max_down,
        }


# Whether a view is watching (state playing or rebuffering, as watch time counts it in
# ``view_summarize``) after an event of each type; absent: unchanged (heartbeat, view_start,
# bitrate_change, a non-fatal error, and rebuffer_end, which only ends a rebuffer while watching).
# A fatal error stops the view. The generated streams' truth holds the two together
# (``tests/streams/test_processors.py``: watching minutes from the same intervals as watch time).
_WATCHING_AFTER = {"playing": True, "rebuffer_start": True, "pause": False, "seek": False, "ended": False,
                   "view_end": False}  # fmt: skip


def view_minutes_due(
    session: str, user: str, view: dict[str, Any], *, settled: int | None, partition: int, offset: int
) -> list[tuple[Any, ...]]:
    """The ``view_minutes`` rows (``rows.VIEW_MINUTE_COLUMNS``) of a view's minutes not emitted yet.

    A minute is emitted once it has settled: once ``settled`` (the earlier of the view's last event
    and the partition's watermark less the grace) has reached its end, every interval that touches
    it is known. ``settled`` None (the view closes) emits all the rest. The view keeps where it
    stopped: ``pm``, the first minute not yet emitted, and ``pw``, whether it was watching then; so
    each minute is emitted once, and each pass reads only the events from ``pm`` on. An event
    stamped before ``pm`` that arrives afterwards (later than the grace) changes no minute, as a
    late event changes no closed summary.
    """
    since = view.get("pm", 0)
    bound = None if settled is None else settled // MINUTE_MS * MINUTE_MS
    if bound is not None and bound <= since:
        return []
    tail = sorted((e for e in view["e"] if e[0] >= since), key=_BY_EVENT_TIME)
    watching = view.get("pw", False)
    previous = since
    minutes: list[int] = []
    for event in tail:
        ts = event[0]
        end = ts if bound is None or ts < bound else bound
        if watching and end > previous:
            first = max(previous // MINUTE_MS, minutes[-1] // MINUTE_MS + 1 if minutes else 0)
            minutes += [m * MINUTE_MS for m in range(first, (end - 1) // MINUTE_MS + 1)]
        if bound is not None and ts >= bound:
            break  # applied by the next pass, which starts at the bound
        previous = ts
        after = _WATCHING_AFTER.get(event[1])
        if after is not None:
            watching = after
        elif event[1] == "error" and event[3]:
            watching = False
    if bound is not None:
        view["pm"], view["pw"] = bound, watching
    video, dims = view["v"], view["dims"]
    return [(m, session, user, video, *dims, partition, offset) for m in minutes]


def view_close(
    session: str, user: str, view: dict[str, Any], *, partition: int, offset: int
) -> tuple[tuple[Any, ...], dict[str, Any], list[tuple[Any, ...]]]:
    """A closed view's ``view_summaries`` row (``rows.VIEW_COLUMNS`` order), its VideoWatched and
    the ``view_minutes`` rows of the minutes not emitted while it was open."""
    f = view_summarize(view)
    closed_by = "ended" if f["ended"] else "view_end"
    reason = "limit" if view.get("limit") else "idle" if view.get("end") is None else closed_by
    watched_id = _video_watched_id_str(session)
    video = view["v"]
    device, os_name, browser, country, cdn, player = view["dims"]
    started = f["started"]
    row = (
        session,
        user,
        video,
        f["start_ts"],
        f["end_ts"],
        device,
        os_name,
        browser,
        country,
        cdn,
        player,
        f["has_view_start"],
        started,
        f["startup_time_ms"],
        f["watch_time_ms"],
        f["rebuffer_count"],
        f["rebuffer_duration_ms"],
        f["error_count"],
        f["fatal_error_count"],
        f["start_failure"],
        f["playback_failure"],
        f["exit_before_start"],
        f["max_position_ms"],
        f["completion"],
        f["event_count"],
        reason,
        watched_id,
        f["seek_count"],
        f["seek_latency_ms"],
        f["bitrate_time_ms"],
        f["bitrate_kbps_ms"],
        f["max_bitrate_kbps"],
        f["scale_time_ms"],
        f["upscale_ms"],
        f["downscale_ms"],
        f["max_upscale"],
        f["max_downscale"],
        partition,
        offset,
    )
    watched = {
        "id": watched_id,
        "type": "VideoWatched",
        "userId": user,
        "sessionId": session,
        "videoId": video,
        "startTime": f["start_ts"],
        "endTime": f["end_ts"],
        "watchTimeMs": f["watch_time_ms"],
        "startupTimeMs": f["startup_time_ms"] if started else None,
        "rebufferCount": f["rebuffer_count"],
        "rebufferDurationMs": f["rebuffer_duration_ms"],
        "completionFraction": f["completion"],
        "failed": f["playback_failure"],
        "closeReason": reason,
        "device": device,
        "os": os_name,
        "browser": browser,
        "country": country,
        "cdn": cdn,
        "player": player,
    }
    return row, watched, view_minutes_due(session, user, view, settled=None, partition=partition, offset=offset)


def video_error(row: tuple[Any, ...], view: dict[str, Any] | None) -> dict[str, Any]:
    """The VideoError of a fatal ``error`` event (its ``events`` row), with its view's context."""
    view_start = None
    if view is not None:
        view_start = next((e[0] for e in view["e"] if e[1] == "view_start"), None)
    event_id = str(row[ID])
    return {
        "id": _uuid5_str(_ERROR_NAMESPACE_BYTES, event_id),  # video_error_id, faster
        "type": "VideoError",
        "eventId": event_id,
        "userId": row[USER],
        "sessionId": row[SESSION],
        "videoId": row[VIDEO],
        "timestamp": row[TS],
        "errorCode": row[ERROR_CODE],
        "errorMessage": row[ERROR_MESSAGE],
        "positionMs": row[POSITION],
        "viewStartTime": view_start,
        "timeSinceViewStartMs": row[TS] - view_start if view_start is not None else None,
        **dict(zip(DIMENSION_NAMES, row[DIMS], strict=True)),
    }


def video_watched_id(session_id: str) -> uuid.UUID:
    return uuid.uuid5(VIDEO_WATCHED_NAMESPACE, session_id)


_WATCHED_NAMESPACE_BYTES = VIDEO_WATCHED_NAMESPACE.bytes


def _video_watched_id_str(session_id: str) -> str:
    """``str(video_watched_id(session_id))`` in a fifth of the time (it runs once per view)."""
    return _uuid5_str(_WATCHED_NAMESPACE_BYTES, session_id)


def _uuid5_str(namespace: bytes, name: str) -> str:
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` without building UUID objects."""
    digest = bytearray(hashlib.sha1(namespace + name.encode(), usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def video_error_id(event_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(VIDEO_ERROR_NAMESPACE, str(event_id))


_ERROR_NAMESPACE_BYTES = VIDEO_ERROR_NAMESPACE.bytes
