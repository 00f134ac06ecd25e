"""Results: rows of ``queries_build``'s SQL -> the API's series, empty buckets filled."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

from metrics.query.definitions import CompiledMetric
from metrics.query.planner import MetricRequest
from metrics.query.vocabulary import INTERVALS

# --- Results ----------------------------------------------------------------------------------


class Point(TypedDict):
    t: str  # bucket start, RFC 3339 UTC
    value: float | int | None


class Series(TypedDict):
    group: dict[str, str]
    points: list[Point]
    total: float | int | None


def bucket_starts(request: MetricRequest) -> list[int]:
    """Epoch seconds of every bucket that [start, end) touches, aligned on the UTC interval.

    A range that cuts a bucket still yields that bucket; its value covers only the part inside.
    """
    if request.interval is None:
        return []
    step = INTERVALS[request.interval][0]
    end = request.end.timestamp()
    starts = []
    t = int(request.start.timestamp()) // step * step
    while t < end:
        starts.append(t)
        t += step
    return starts


@functools.lru_cache(maxsize=256)
def _bucket_labels(start: float, end: float, interval: str) -> tuple[tuple[int, str], ...]:
    """(epoch seconds, RFC 3339 label) of each bucket; shared by every metric and group of a request."""
    request = MetricRequest(
        start=datetime.fromtimestamp(start, UTC), end=datetime.fromtimestamp(end, UTC), interval=interval
    )
    return tuple((t, datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) for t in bucket_starts(request))


def _json_number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        return value
    return int(value)


def series_assemble(
    metric: CompiledMetric, request: MetricRequest, rows: Sequence[Sequence[Any]], member: int = 0
) -> list[Series]:
    """Rows of a query of ``queries_build`` -> the API series of its ``member``-th metric (its
    ``m_value<member>`` column), empty buckets filled per the metric; its own ``limit`` largest groups."""
    n = len(request.group_by)
    column = n + 2 + member
    empty: float | int | None = 0 if metric.zero_filled else None
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    order: list[tuple[Any, ...]] = []
    for row in rows:
        key = tuple(row[:n])
        bucket, is_total, value = row[n], row[n + 1], row[column]
        entry = groups.get(key)
        if entry is None:
            entry = groups[key] = {"points": {}, "total": empty}
            order.append(key)
        if is_total:
            entry["total"] = _json_number(value)
        else:
            entry["points"][int(bucket)] = _json_number(value)
    if not groups and n == 0:
        groups[()] = {"points": {}, "total": empty}
        order.append(())
    if n:
        # Largest total first, then by group values; ranked before any point is built, so groups
        # past ``limit`` cost nothing.
        order.sort(key=lambda k: (groups[k]["total"] is None, -(groups[k]["total"] or 0), tuple(str(v) for v in k)))
        del order[request.limit :]
    buckets = (
        _bucket_labels(request.start.timestamp(), request.end.timestamp(), request.interval) if request.interval else ()
    )
    series: list[Series] = []
    for key in order:
        entry = groups[key]
        points: list[Point]
        if request.interval:
            get = entry["points"].get
            points = [{"t": label, "value": get(t, empty)} for t, label in buckets]
        else:
            # No interval: the whole range is one bucket, labelled with its start (API.md's shape).
            points = [{"t": request.start.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": entry["total"]}]
        series.append(
            {"group": dict(zip(request.group_by, key, strict=True)), "points": points, "total": entry["total"]}
        )
    return series
