"""Generated views and events whose metric values are computed here, independently of the SQL.

The truth functions follow API.md's wording of each built-in metric, not the stored definitions, so
a wrong definition or a wrong query both show up as a difference.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from streams import processors

DIM_VALUES = {
    "country": ["US", "DE", "FR", "BR", "JP"],
    "device": ["mobile", "desktop", "tv"],
    "os": ["ios", "android", "linux"],
    "browser": ["chrome", "safari", "firefox"],
    "cdn": ["cdn-a", "cdn-b"],
    "player": ["web", "native"],
}
API_TO_COL = {
    "videoId": "video_id",
    "country": "country",
    "device": "device",
    "os": "os",
    "browser": "browser",
    "cdn": "cdn",
    "player": "player",
    "type": "type",
}
# The column order the stream sink writes: the generated rows match the real ones.
EVENT_COLUMNS = processors.EVENT_COLUMNS
VIEW_COLUMNS = processors.VIEW_COLUMNS
VIEW_MINUTE_COLUMNS = processors.VIEW_MINUTE_COLUMNS


@dataclass
class Dataset:
    base: datetime
    views: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    minutes: list[dict[str, Any]] = field(default_factory=list)  # view_minutes rows


def generate(*, base: datetime, n_views: int = 600, days: int = 3, seed: int = 7) -> Dataset:
    """Views spread over ``days`` days from ``base``, each with a plausible event sequence."""
    rng = random.Random(seed)
    # The seek and picture columns (streams 0007) draw from a generator of their own, so the
    # other columns stay what they were for a seed.
    picture_rng = random.Random(f"{seed}-picture")
    data = Dataset(base=base)
    users = [f"user-{i}" for i in range(80)]
    videos = [f"video-{i}" for i in range(9)]
    offset = 0
    for i in range(n_views):
        start = base + timedelta(milliseconds=rng.randrange(days * 86_400_000))
        dims = {dim: rng.choice(values) for dim, values in DIM_VALUES.items()}
        # Skew videos so top-N has a clear order.
        video = videos[min(int(rng.expovariate(0.5)), len(videos) - 1)]
        user = rng.choice(users)
        session = f"s-{i}"
        has_view_start = rng.random() < 0.95
        outcome = rng.random()
        started = outcome < 0.8
        start_failure = 0.8 <= outcome < 0.88
        exit_before_start = outcome >= 0.88
        playback_failure = start_failure or (started and rng.random() < 0.05)
        startup = rng.randrange(100, 5000) if started else 0
        watch = rng.randrange(1_000, 600_000) if started else 0
        rebuffer = rng.randrange(0, watch // 10 + 1) if started and rng.random() < 0.4 else 0
        view = {
            "session_id": session,
            "user_id": user,
            "video_id": video,
            "start_ts": start,
            "end_ts": start + timedelta(milliseconds=startup + watch + 1000),
            **dims,
            "has_view_start": has_view_start,
            "started": started,
            "startup_time_ms": startup,
            "watch_time_ms": watch,
            "rebuffer_count": 1 if rebuffer else 0,
            "rebuffer_duration_ms": rebuffer,
            "error_count": 1 if playback_failure else 0,
            "fatal_error_count": 1 if playback_failure else 0,
            "start_failure": start_failure,
            "playback_failure": playback_failure,
            "exit_before_start": exit_before_start,
            "max_position_ms": watch,
            "completion": None,
            "event_count": 0,
            "close_reason": "ended",
            "video_watched_id": uuid.UUID(int=rng.getrandbits(128)),
            **_seek_and_picture(picture_rng, watch if started else 0),
            "kafka_partition": 0,
            "kafka_offset": i,
        }
        types = (["view_start"] if has_view_start else []) + (["playing"] if started else [])
        types += ["heartbeat"] * rng.randrange(0, 4)
        if playback_failure:
            types.append("error")
        if rng.random() < 0.1:
            types.append("share.click")
        types.append("ended")
        moment = start
        for event_type in types:
            data.events.append(
                {
                    "event_id": uuid.UUID(int=rng.getrandbits(128)),
                    "type": event_type,
                    "ts": moment,
                    "user_id": user,
                    "session_id": session,
                    "video_id": video,
                    "client_ts": moment,
                    "received_at": moment,
                    "position_ms": None,
                    "bitrate_kbps": None,
                    "error_code": "E1" if event_type == "error" else "",
                    "error_message": "",
                    "fatal": event_type == "error",
                    **dims,
                    "properties": "",
                    "late": False,
                    "kafka_partition": 0,
                    "kafka_offset": offset,
                }
            )
            offset += 1
            moment += timedelta(milliseconds=rng.randrange(1, 20_000))
        view["event_count"] = len(types)
        data.views.append(view)
        if started:  # watching from the first frame for ``watch`` ms: one row per minute it touches
            first = start + timedelta(milliseconds=startup)
            last = first + timedelta(milliseconds=watch - 1)
            minute = first.replace(second=0, microsecond=0)
            while minute <= last:
                data.minutes.append(
                    {"minute_ts": minute, "session_id": session, "user_id": user, "video_id": video, **dims}
                    | {"kafka_partition": 0, "kafka_offset": i}
                )
                minute += timedelta(minutes=1)
    return data


def _seek_and_picture(rng: random.Random, watch: int) -> dict[str, Any]:
    """The streams 0007 columns of a view that played for ``watch`` ms (all 0 when it never did)."""
    seeks = rng.choice([0, 0, 1, 3]) if watch else 0
    playing = watch - rng.randrange(0, watch // 10 + 1) if watch else 0
    scale_time = playing if rng.random() < 0.7 else 0  # sizes known for some views only
    bitrate_time = playing if rng.random() < 0.8 else 0
    average_up, average_down = rng.choice([0.0, 0.25, 1.0]), rng.choice([0.0, 0.5])
    return {
        "seek_count": seeks,
        "seek_latency_ms": sum(rng.randrange(50, 3000) for _ in range(seeks)),
        "bitrate_time_ms": bitrate_time,
        "bitrate_kbps_ms": float(bitrate_time * rng.randrange(300, 8000)),
        "max_bitrate_kbps": rng.randrange(300, 8000) if bitrate_time else 0,
        "scale_time_ms": scale_time,
        "upscale_ms": scale_time * average_up,
        "downscale_ms": scale_time * average_down,
        "max_upscale": average_up * rng.choice([1, 2]) if scale_time else 0.0,
        "max_downscale": average_down if scale_time else 0.0,
    }


def insert(client: Any, data: Dataset) -> None:
    client.execute(
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES",
        [tuple(e[c] for c in EVENT_COLUMNS) for e in data.events],
    )
    client.execute(
        f"INSERT INTO view_summaries ({', '.join(VIEW_COLUMNS)}) VALUES",
        [tuple(v[c] for c in VIEW_COLUMNS) for v in data.views],
    )
    client.execute(
        f"INSERT INTO view_minutes ({', '.join(VIEW_MINUTE_COLUMNS)}) VALUES",
        [tuple(m[c] for c in VIEW_MINUTE_COLUMNS) for m in data.minutes],
    )


# --- Truth ------------------------------------------------------------------------------------


def _quantile(values: list[float], level: float) -> float | None:
    """ClickHouse quantileExact: the element at floor(n * level) of the sorted values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.floor(len(ordered) * level))]


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def _count(flag: str | None = None) -> Callable[[list[dict]], float]:
    return lambda rows: sum(1 for r in rows if flag is None or r[flag])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# The per-view QoE scores of README "QoE scores", written out again from their definitions (a
# second implementation to hold the SQL in metrics/query/registry.py to).
def _success_score(r: dict) -> float:
    return 0.0 if r["playback_failure"] else 50.0 if r["exit_before_start"] else 100.0


def _startup_score(r: dict) -> float:
    return 100 * 8 / (8 + r["startup_time_ms"] / 1000)


def _smoothness_score(r: dict) -> float:
    watched = max(r["watch_time_ms"], 1)
    per_minute = r["rebuffer_count"] / (watched / 60_000)
    return 100 / (1 + 10 * r["rebuffer_duration_ms"] / watched) / (1 + per_minute / 2)


def _video_quality_score(r: dict) -> float:
    # Mux's: 100 * e^(-0.33 * (0.15 * max upscaling + 0.85 * time-weighted average upscaling)).
    average = r["upscale_ms"] / r["scale_time_ms"]
    return 100 * math.exp(-0.33 * (0.15 * r["max_upscale"] + 0.85 * average))


def _experience_score(r: dict) -> float:
    if not r["started"]:
        return _success_score(r)
    return _success_score(r) * (_startup_score(r) + _smoothness_score(r)) / 200


#: name -> (rows: "views" or "events", aggregate over the rows of one bucket/group, zero-filled?)
TRUTH: dict[str, tuple[str, Callable[[list[dict]], Any], bool]] = {
    "events": ("events", len, True),
    "errors": ("error_events", len, True),
    "views": ("views", _count("has_view_start"), True),
    "unique_viewers": ("views", lambda rows: len({r["user_id"] for r in rows if r["has_view_start"]}), True),
    "watch_time_ms": ("views", lambda rows: sum(r["watch_time_ms"] for r in rows), True),
    "video_startup_time_ms_p50": (
        "views",
        lambda rows: _quantile([r["startup_time_ms"] for r in rows if r["started"]], 0.5),
        False,
    ),
    "video_startup_time_ms_p95": (
        "views",
        lambda rows: _quantile([r["startup_time_ms"] for r in rows if r["started"]], 0.95),
        False,
    ),
    "video_start_failure_rate": (
        "views",
        lambda rows: _ratio(_count("start_failure")(rows), _count("has_view_start")(rows)),
        False,
    ),
    "exits_before_video_start_rate": (
        "views",
        lambda rows: _ratio(_count("exit_before_start")(rows), _count("has_view_start")(rows)),
        False,
    ),
    "rebuffer_ratio": (
        "views",
        lambda rows: _ratio(sum(r["rebuffer_duration_ms"] for r in rows), sum(r["watch_time_ms"] for r in rows)),
        False,
    ),
    "playback_failure_rate": (
        "views",
        lambda rows: _ratio(_count("playback_failure")(rows), _count("has_view_start")(rows)),
        False,
    ),
    "playback_success_score": (
        "views",
        lambda rows: _mean([_success_score(r) for r in rows if r["has_view_start"]]),
        False,
    ),
    "startup_time_score": ("views", lambda rows: _mean([_startup_score(r) for r in rows if r["started"]]), False),
    "smoothness_score": ("views", lambda rows: _mean([_smoothness_score(r) for r in rows if r["started"]]), False),
    "viewer_experience_score": (
        "views",
        lambda rows: _mean([_experience_score(r) for r in rows if r["has_view_start"]]),
        False,
    ),
    "rebuffer_count": ("views", lambda rows: sum(r["rebuffer_count"] for r in rows), True),
    "concurrent_viewers": ("view_minutes", lambda rows: len({r["session_id"] for r in rows}), True),
    "video_quality_score": (
        "views",
        lambda rows: _mean([_video_quality_score(r) for r in rows if r["scale_time_ms"] > 0]),
        False,
    ),
    "upscale_percentage": (
        "views",
        lambda rows: _ratio(100 * sum(r["upscale_ms"] for r in rows), sum(r["scale_time_ms"] for r in rows)),
        False,
    ),
    "downscale_percentage": (
        "views",
        lambda rows: _ratio(100 * sum(r["downscale_ms"] for r in rows), sum(r["scale_time_ms"] for r in rows)),
        False,
    ),
    "max_upscale_percentage": (
        "views",
        lambda rows: _mean([100 * r["max_upscale"] for r in rows if r["scale_time_ms"] > 0]),
        False,
    ),
    "average_bitrate_kbps": (
        "views",
        lambda rows: _ratio(sum(r["bitrate_kbps_ms"] for r in rows), sum(r["bitrate_time_ms"] for r in rows)),
        False,
    ),
    "seek_latency": (
        "views",
        lambda rows: _mean([r["seek_latency_ms"] / r["seek_count"] for r in rows if r["seek_count"] > 0]),
        False,
    ),
    "rebuffer_frequency": (
        "views",
        lambda rows: _ratio(sum(r["rebuffer_count"] for r in rows), sum(r["watch_time_ms"] for r in rows) / 60_000),
        False,
    ),
}

STEP = {"minute": 60, "hour": 3600, "day": 86400}


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def expected(
    data: Dataset,
    *,
    rows_kind: str,
    aggregate: Callable[[list[dict]], Any],
    zero: bool,
    start: datetime,
    end: datetime,
    interval: str | None,
    group_by: Iterable[str] = (),
    filters: Iterable[tuple[str, str]] = (),
    limit: int = 100,
    row_filter: Callable[[dict], bool] | None = None,
) -> list[dict[str, Any]]:
    """The API's ``series`` list computed in Python from the generated rows."""
    group_by = list(group_by)
    wanted: dict[str, set[str]] = defaultdict(set)
    for dim, value in filters:
        wanted[API_TO_COL[dim]].add(value)
    rows = data.views if rows_kind == "views" else data.minutes if rows_kind == "view_minutes" else data.events
    if rows_kind == "error_events":  # an event-type filter selects rows, so groups without errors do not exist
        rows = [r for r in data.events if r["type"] == "error"]
    time_key = {"views": "start_ts", "view_minutes": "minute_ts"}.get(rows_kind, "ts")
    selected = [
        r
        for r in rows
        if start <= r[time_key] < end
        and all(r[col] in values for col, values in wanted.items())
        and (row_filter is None or row_filter(r))
    ]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in selected:
        groups[tuple(r[API_TO_COL[d]] for d in group_by)].append(r)
    if not group_by and not groups:
        groups[()] = []
    empty = 0 if zero else None
    buckets: list[int] = []
    if interval:
        step = STEP[interval]
        t = int(start.timestamp()) // step * step
        while t < end.timestamp():
            buckets.append(t)
            t += step
    series: list[dict[str, Any]] = []
    for key, members in groups.items():
        total = aggregate(members) if members else empty
        per_bucket: dict[int, list[dict]] = defaultdict(list)
        if interval:
            for r in members:
                per_bucket[int(r[time_key].timestamp()) // STEP[interval] * STEP[interval]].append(r)
        points = [{"t": _iso(t), "value": aggregate(per_bucket[t]) if per_bucket.get(t) else empty} for t in buckets]
        if not interval:
            points = [{"t": _iso(int(start.timestamp())), "value": total}]  # the whole range as one bucket
        series.append({"group": dict(zip(group_by, key, strict=True)), "points": points, "total": total})
    if group_by:
        series.sort(key=lambda s: (s["total"] is None, -(s["total"] or 0), tuple(str(v) for v in s["group"].values())))
        series = series[:limit]
    return series
