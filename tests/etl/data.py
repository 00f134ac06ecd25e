"""Generated rows for the exported ClickHouse tables, with the per-video sums the tests expect."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections import defaultdict
from typing import Any

EVENT_COLUMNS = (
    "event_id, type, ts, user_id, session_id, video_id, client_ts, received_at, position_ms, bitrate_kbps, "
    "error_code, error_message, fatal, device, os, browser, country, cdn, player, properties, late, "
    "kafka_partition, kafka_offset"
)
VIEW_COLUMNS = (
    "session_id, user_id, video_id, start_ts, end_ts, device, os, browser, country, cdn, player, has_view_start, "
    "started, startup_time_ms, watch_time_ms, rebuffer_count, rebuffer_duration_ms, error_count, fatal_error_count, "
    "start_failure, playback_failure, exit_before_start, max_position_ms, completion, event_count, close_reason, "
    "video_watched_id, kafka_partition, kafka_offset"
)
_offset = 0


def _next_offset() -> int:
    global _offset
    _offset += 1
    return _offset


def events_insert(
    client: Any, *, day: dt.date, count: int, videos: int = 5, seed: int = 0, neighbours: bool = True
) -> dict[str, tuple[int, int]]:
    """Insert ``count`` events spread over ``day`` (UTC), plus (``neighbours``) one just before and one just after it.

    Returns {video_id: (events, sum(position_ms))} for the day only.
    """
    rng = random.Random(seed)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    rows = []
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for index in range(count):
        # The first and last rows sit on the day's edges: 00:00:00.000 is in, 23:59:59.999 is in.
        if index == 0:
            ts = start
        elif index == 1:
            ts = start + dt.timedelta(days=1, milliseconds=-1)
        else:
            ts = start + dt.timedelta(milliseconds=rng.randrange(86_400_000))
        video = f"video-{rng.randrange(videos)}"
        position = rng.randrange(0, 3_600_000)
        rows.append(_event(ts, video, position, rng))
        sums[video][0] += 1
        sums[video][1] += position
    if neighbours:  # rows that must not be exported with this day
        rows.append(_event(start - dt.timedelta(milliseconds=1), "video-0", 1, rng))
        rows.append(_event(start + dt.timedelta(days=1), "video-0", 1, rng))
    client.execute(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES", rows)
    return {video: (n, total) for video, (n, total) in sums.items()}


def _event(ts: dt.datetime, video: str, position: int, rng: random.Random) -> tuple[Any, ...]:
    kind = rng.choice(["playing", "heartbeat", "pause", "error"])
    return (
        uuid.UUID(int=rng.getrandbits(128), version=4),
        kind,
        ts,
        f"user-{rng.randrange(1000)}",
        f"session-{rng.randrange(10_000)}",
        video,
        ts - dt.timedelta(milliseconds=rng.randrange(2000)),
        ts + dt.timedelta(milliseconds=rng.randrange(2000)),
        position,
        None if kind == "error" else rng.choice([800, 1600, 3200]),
        "E42" if kind == "error" else "",
        "boom" if kind == "error" else "",
        kind == "error" and rng.random() < 0.5,
        rng.choice(["desktop", "mobile", "tv"]),
        rng.choice(["linux", "ios", "android"]),
        rng.choice(["firefox", "chrome", ""]),
        rng.choice(["FR", "DE", "US"]),
        "cdn-a",
        "player-1",
        '{"k": 1}' if rng.random() < 0.1 else "",
        False,
        rng.randrange(8),
        _next_offset(),
    )


def views_insert(
    client: Any, *, day: dt.date, count: int, videos: int = 5, seed: int = 0
) -> dict[str, tuple[int, int]]:
    """Insert ``count`` closed views starting on ``day``; return {video_id: (views, sum(watch_time_ms))}."""
    rng = random.Random(seed)
    start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    rows = []
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for _ in range(count):
        view_start = start + dt.timedelta(milliseconds=rng.randrange(86_400_000))
        video = f"video-{rng.randrange(videos)}"
        watch = rng.randrange(0, 1_800_000)
        started = rng.random() < 0.9
        rows.append(
            (
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                f"user-{rng.randrange(1000)}",
                video,
                view_start,
                view_start + dt.timedelta(milliseconds=watch + 5000),
                "desktop",
                "linux",
                "firefox",
                "FR",
                "cdn-a",
                "player-1",
                True,
                started,
                rng.randrange(100, 3000) if started else 0,
                watch,
                rng.randrange(5),
                rng.randrange(10_000),
                0,
                0,
                False,
                False,
                not started,
                watch,
                None if rng.random() < 0.2 else rng.random(),
                rng.randrange(1, 100),
                rng.choice(["ended", "view_end", "idle"]),
                uuid.UUID(int=rng.getrandbits(128), version=4),
                rng.randrange(8),
                _next_offset(),
            )
        )
        sums[video][0] += 1
        sums[video][1] += watch
    client.execute(f"INSERT INTO view_summaries ({VIEW_COLUMNS}) VALUES", rows)
    return {video: (n, total) for video, (n, total) in sums.items()}


def clickhouse_per_video(client: Any, *, table: str, day: dt.date) -> dict[str, tuple[int, int]]:
    """Per-video (rows, sum) for one UTC day, as ClickHouse computes it."""
    if table == "events":
        sql = (
            "SELECT video_id, count(), sum(position_ms) FROM events WHERE toDate(ts, 'UTC') = %(day)s GROUP BY video_id"
        )
    else:
        sql = (
            "SELECT video_id, count(), sum(watch_time_ms) FROM view_summaries FINAL "
            "WHERE toDate(start_ts, 'UTC') = %(day)s GROUP BY video_id"
        )
    return {row[0]: (int(row[1]), int(row[2])) for row in client.execute(sql, {"day": day})}


def bigquery_per_video(client: Any, *, dataset: str, table: str, day: dt.date) -> dict[str, tuple[int, int]]:
    from google.cloud import bigquery

    time_column, value = ("ts", "position_ms") if table == "events" else ("start_ts", "watch_time_ms")
    sql = (
        f"SELECT video_id, COUNT(*) AS n, SUM({value}) AS total FROM `{client.project}.{dataset}.{table}` "
        f"WHERE DATE({time_column}) = @day GROUP BY video_id"
    )
    config = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("day", "DATE", day)])
    return {
        row["video_id"]: (int(row["n"]), int(row["total"])) for row in client.query(sql, job_config=config).result()
    }


def bigquery_scalar(client: Any, sql: str) -> Any:
    return next(iter(client.query(sql).result()))[0]
