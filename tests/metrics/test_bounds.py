"""The bounds of a metric question on plain data (metrics.bounds): parsing, window, caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from metrics import bounds, query

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
BOUNDS = bounds.Bounds()


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("2026-11-27T10:00:00Z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27t10:00:00z", datetime(2026, 11, 27, 10, tzinfo=UTC)),
        ("2026-11-27 10:00:00+02:00", datetime(2026, 11, 27, 8, tzinfo=UTC)),
        ("2026-11-27T10:00:00.123456789-01:30", datetime(2026, 11, 27, 11, 30, 0, 123456, tzinfo=UTC)),
        ("0001-01-01T00:00:00+23:59", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=23, minutes=59)))),
    ],
)
def test_rfc3339_dates_parse(raw: str, want: datetime) -> None:
    assert bounds.moment_parse(raw, field="from") == want


@pytest.mark.parametrize(
    "raw",
    [
        "2026-11-27T10:00:00",  # no offset: the API does not guess a zone
        "2026-11-27",
        "yesterday",
        "",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-12-31T23:59:60Z",  # a leap second: Python has no representation
        "2026-11-27T10:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "١٢٣٤-01-01T00:00:00Z",  # Arabic-Indic digits match \\d without re.ASCII
        "20261127T100000Z",  # ISO 8601 basic format, not RFC 3339
        "2026-W48-5T10:00:00Z",
        "2026-11-27T10:00:00Z\x00",
    ],
)
def test_malformed_dates_name_the_field(raw: str) -> None:
    with pytest.raises(query.QueryError) as excinfo:
        bounds.moment_parse(raw, field="to")
    assert excinfo.value.field == "to" and excinfo.value.message


def test_naive_dates_are_utc_only_when_asked() -> None:
    assert bounds.moment_parse("2026-11-27T10:00:00", field="from", assume_utc=True) == datetime(
        2026, 11, 27, 10, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (None, datetime(1, 1, 1, tzinfo=UTC), "to"),  # the reported OverflowError
        (datetime(2026, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC), "to"),
        (datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC), None, "from"),
        (datetime(1970, 1, 1, tzinfo=timezone(timedelta(hours=1))), None, "from"),  # 1969 in UTC
        (None, datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-23))), "to"),
        (datetime(2200, 1, 1, 0, 0, 1, tzinfo=UTC), None, "from"),
        (NOW, NOW, "to"),
        (NOW + timedelta(hours=1), None, "from"),  # after the default 'to' (now): name what was given
    ],
)
def test_out_of_range_dates_name_the_parameter(start: datetime | None, end: datetime | None, field: str) -> None:
    with pytest.raises(query.QueryError) as excinfo:
        bounds.range_resolve(start=start, end=end, now=NOW)
    assert excinfo.value.field == field, excinfo.value.message


def test_range_defaults_and_utc() -> None:
    assert bounds.range_resolve(start=None, end=None, now=NOW) == (NOW - timedelta(hours=24), NOW)
    early = datetime(1970, 1, 1, 3, tzinfo=UTC)
    assert bounds.range_resolve(start=None, end=early, now=NOW) == (bounds.RANGE_MIN, early)
    start, end = bounds.range_resolve(start=bounds.RANGE_MIN, end=bounds.RANGE_MAX, now=NOW)
    assert (start, end) == (bounds.RANGE_MIN, bounds.RANGE_MAX) and start.tzinfo is UTC
    plus2 = timezone(timedelta(hours=2))
    start, _ = bounds.range_resolve(start=datetime(2026, 1, 1, 2, tzinfo=plus2), end=None, now=NOW)
    assert start == datetime(2026, 1, 1, tzinfo=UTC) and start.utcoffset() == timedelta(0)


def _request(span: timedelta, **kw: object) -> query.MetricRequest:
    fields: dict = {"start": NOW - span, "end": NOW}
    fields.update(kw)
    return query.MetricRequest(**fields)


@pytest.mark.parametrize(
    ("request_", "field", "says"),
    [
        (_request(timedelta(days=7, minutes=1), interval="minute"), "interval", "10,080"),
        (_request(timedelta(days=367), interval="hour"), "interval", "8,784"),
        (_request(timedelta(days=1), interval="fortnight"), "interval", "minute"),
        (_request(timedelta(days=1), limit=0), "limit", "10000"),
        (_request(timedelta(days=1), limit=10_001), "limit", "10000"),
        (_request(timedelta(days=2), interval="minute", group_by=("country",)), "limit", "100,000"),
        (_request(timedelta(days=401), group_by=("videoId",)), "groupBy", "400 days"),
        (_request(-timedelta(hours=1)), "to", "after"),
    ],
)
def test_caps_name_the_parameter_and_the_maximum(request_: query.MetricRequest, field: str, says: str) -> None:
    with pytest.raises(query.QueryError) as excinfo:
        bounds.request_check(request_, BOUNDS)
    assert excinfo.value.field == field
    assert says in excinfo.value.message, excinfo.value.message


@pytest.mark.parametrize(
    "request_",
    [
        _request(timedelta(days=7), interval="minute"),  # aligned: exactly 10,080 buckets
        _request(timedelta(days=366), interval="hour"),
        query.MetricRequest(start=bounds.RANGE_MIN, end=bounds.RANGE_MAX, interval="day"),  # 84,006 days
        _request(timedelta(days=400), group_by=("videoId",)),
        _request(timedelta(days=4000), group_by=("videoId",), filters=(("videoId", "v1"),)),  # bounded groups
        _request(timedelta(days=4000), group_by=("country",), limit=10_000),  # one point per group
        _request(timedelta(days=1), interval="minute", group_by=("country",), limit=69),  # 69 x 1,440
    ],
)
def test_questions_inside_the_caps_pass(request_: query.MetricRequest) -> None:
    bounds.request_check(request_, BOUNDS)


def test_bucket_count_counts_touched_buckets() -> None:
    start = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    request = query.MetricRequest(start=start, end=start + timedelta(minutes=2), interval="minute")
    assert bounds.bucket_count(request) == len(query.bucket_starts(request)) == 3
