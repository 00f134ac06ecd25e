"""What a metric question may ask: the one place the bounds of a request are decided.

``GET /metrics``, the dashboards and the admin preview all go through
``selectors.metric_timeseries_get``, which calls :func:`range_resolve` and :func:`request_check`
before anything is computed from the dates or sent to ClickHouse; the API and the dashboards parse
the query string's dates with :func:`moment_parse`. A failure is a :class:`query.QueryError`
whose ``field`` is the query parameter to change, and whose message says the maximum.

Why each bound:

* dates: RFC 3339 (API.md); a date without an offset is read as UTC, as the API and the dashboards
  always did (``assume_utc``: refusing it now would break existing clients). Only
  ASCII digits count (``\\d`` alone would accept Arabic-Indic digits, which ``datetime`` rejects
  later with an unrelated message).
* the window [1970-01-01, 2200-01-01) is the stored time range (``event_format``): no event can lie
  outside it, and inside it every date converts to UTC and to ClickHouse's ``DateTime64(3)``
  without overflow (year 1 or 9999 plus a day's arithmetic is Python's ``OverflowError``).
* buckets per series, per interval (settings ``METRICS_MAX_{MINUTE,HOUR,DAY}_BUCKETS``): the
  answer holds one point per bucket, built in Python; 7 days of minutes, a leap year of hours,
  the whole stored range of days (84,006) by default.
* points of a grouped answer (``METRICS_MAX_GROUPED_POINTS``): ``limit`` series of that many
  buckets each; the series of every group are built and serialized, so the product is what costs.
* ranges grouped by a high-cardinality dimension (``METRICS_MAX_HIGH_CARDINALITY_RANGE_DAYS``,
  ``videoId``): ClickHouse ranks *every* group of the range before keeping ``limit`` of them, so
  its work grows with the range, whatever ``limit`` is. The default is the longest retention of a
  table keyed by video (``metrics_view_video_day``, 400 days): a longer range cannot find more.
  The other dimensions have a few hundred values at most (countries, devices, players, types).
* what remains (a costly range that passes these bounds) is stopped by the per-query ClickHouse
  time and memory limits (``selectors.query_execute``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from analytics_platform.event_format import TIMESTAMP_MAX_MS, TIMESTAMP_MIN_MS
from metrics.query import HIGH_CARDINALITY_DIMENSIONS, INTERVALS, MAX_LIMIT, MetricRequest, QueryError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The stored time range: ``from`` no earlier, ``to`` (exclusive) no later.
RANGE_MIN = EPOCH + timedelta(milliseconds=TIMESTAMP_MIN_MS)
RANGE_MAX = EPOCH + timedelta(milliseconds=TIMESTAMP_MAX_MS)
DEFAULT_SPAN = timedelta(hours=24)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))?",
    re.ASCII,
)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Bounds:
    """The caps of one request (read from settings by ``selectors.request_bounds``)."""

    max_buckets: Mapping[str, int] = field(
        default_factory=lambda: {"minute": 7 * 24 * 60, "hour": 366 * 24, "day": (TIMESTAMP_MAX_MS // 86_400_000)}
    )
    max_grouped_points: int = 100_000
    max_high_cardinality_days: int = 400


def moment_parse(raw: str, *, field: str, assume_utc: bool = False) -> datetime:
    """An RFC 3339 date-time (``2026-11-27T10:00:00Z``, ``...+02:00``, fractions to 9 digits).

    ``assume_utc`` reads a date without offset as UTC (the API and the dashboards, see the module
    doc); without it such a date is refused.
    """
    match = _RFC3339.fullmatch(raw.strip())
    if match is None:
        raise QueryError(f"{field} must be an RFC 3339 date-time like 2026-11-27T10:00:00Z", field=field)
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if zulu is None and sign is None and not assume_utc:
        raise QueryError(f"{field} needs a UTC offset (Z or +hh:mm), e.g. 2026-11-27T10:00:00Z", field=field)
    try:
        tz = UTC
        if sign is not None:
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            tz = timezone(-offset if sign == "-" else offset)
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
    except ValueError as exc:  # day 31 of a short month, hour 24, a leap second, offset >= 24 h
        raise QueryError(f"{field} is not a valid date-time: {exc}", field=field) from exc


def _in_window(moment: datetime, *, field: str) -> None:
    # Differences of aware datetimes never overflow (a timedelta spans 999,999,999 days), unlike
    # astimezone(UTC) of 9999-12-31T23:59-01:00; so compare before converting.
    if not RANGE_MIN <= moment <= RANGE_MAX:
        raise QueryError(
            f"{field} must lie between {_iso(RANGE_MIN)} and {_iso(RANGE_MAX)} (the stored time range)", field=field
        )


def range_resolve(*, start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) in UTC, defaults filled: ``to`` = ``now``, ``from`` = ``to`` - 24 h.

    A default ``from`` that would fall before the stored range starts at the range's start.
    """
    if start is not None:
        _in_window(start, field="from")
    if end is not None:
        _in_window(end, field="to")
    resolved_end = (end or now).astimezone(UTC)
    resolved_start = max(resolved_end - DEFAULT_SPAN, RANGE_MIN) if start is None else start.astimezone(UTC)
    if resolved_end <= resolved_start:
        # Name the parameter the client gave: 'to' when both (or only 'to') were given.
        culprit = "to" if end is not None else "from"
        raise QueryError(f"'to' ({_iso(resolved_end)}) must be after 'from' ({_iso(resolved_start)})", field=culprit)
    return resolved_start, resolved_end


def bucket_count(request: MetricRequest) -> int:
    """Buckets [start, end) touches on the interval's UTC grid (1 for a total)."""
    if request.interval is None:
        return 1
    step_ms = INTERVALS[request.interval][0] * 1000
    start_ms = (request.start - EPOCH) // timedelta(milliseconds=1)
    end_ms = (request.end - EPOCH) // timedelta(milliseconds=1)
    return -(-end_ms // step_ms) - start_ms // step_ms


def request_check(request: MetricRequest, bounds: Bounds) -> None:
    """Refuse a question whose answer or cost is beyond ``bounds`` (see the module doc)."""
    _in_window(request.start, field="from")
    _in_window(request.end, field="to")
    if request.end <= request.start:
        raise QueryError("'to' must be after 'from'", field="to")
    if request.interval is not None and request.interval not in INTERVALS:
        raise QueryError(f"interval must be one of {', '.join(INTERVALS)}", field="interval")
    if not 1 <= request.limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    buckets = bucket_count(request)
    if request.interval is not None:
        cap = bounds.max_buckets[request.interval]
        if buckets > cap:
            step = timedelta(seconds=INTERVALS[request.interval][0])
            raise QueryError(
                f"interval={request.interval} allows at most {cap:,} buckets ({_span(cap * step)}) per query; "
                f"this range has {buckets:,}: use a coarser interval or a shorter range",
                field="interval",
            )
    if request.group_by:
        points = request.limit * buckets
        if points > bounds.max_grouped_points:
            most = max(1, bounds.max_grouped_points // buckets)
            raise QueryError(
                f"a grouped answer holds at most {bounds.max_grouped_points:,} points (limit x buckets); "
                f"limit={request.limit} x {buckets:,} buckets is {points:,}: use limit <= {most}, "
                "a coarser interval or a shorter range",
                field="limit",
            )
        # A filter on the dimension bounds its groups to the filter's values: no range cap then.
        filtered = {dim for dim, _ in request.filters}
        wide = sorted(HIGH_CARDINALITY_DIMENSIONS.intersection(request.group_by) - filtered)
        max_span = timedelta(days=bounds.max_high_cardinality_days)
        if wide and request.end - request.start > max_span:
            raise QueryError(
                f"groupBy={wide[0]} allows a range of at most {bounds.max_high_cardinality_days} days; "
                f"this one is {_span(request.end - request.start)}: shorten the range or filter on {wide[0]}",
                field="groupBy",
            )


def _span(span: timedelta) -> str:
    if span >= timedelta(days=2):
        return f"{span / timedelta(days=1):,.0f} days"
    return f"{span / timedelta(hours=1):,.0f} hours"
