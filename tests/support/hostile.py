"""Generated hostile input for the pipeline's tests (hypothesis strategies).

Aimed at the edges: times across everything a client can write (epoch numbers far outside any
range, RFC 3339 from year 1 to 9999, with and without ``sentAt``), lengths at and past every bound,
unicode edge cases (escaped lone surrogates, NUL, non-BMP), nesting far past every limit, integers
past 64 bits, custom types, duplicates.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import strategies as st

from analytics_platform import event_format as ef

# Times are drawn around the real clock: ingest judges the accepted window against its receive time.
NOW_MS = int(time.time() * 1000)

# Strings: mostly ordinary, some at and past the bounds, some with characters encoders trip on.
edgy_text = st.sampled_from(["", "\x00", "\u2028", "é", "😀", "\ufeff", "a\\b", '"']) | st.text(max_size=12)
lengths = st.sampled_from(
    [1, ef.USER_ID_MAX_CHARS, ef.USER_ID_MAX_CHARS + 1, ef.DIMENSION_MAX_CHARS, ef.DIMENSION_MAX_CHARS + 1]
)
long_text = st.builds(lambda n, c: c * n, lengths, st.sampled_from(["x", "é", "😀"]))
texts = edgy_text | long_text

far_ints = st.sampled_from([-1, 0, 2**53, 2**53 + 1, 2**63, 2**64 + 5, -(2**70), ef.TIMESTAMP_MAX_MS + 1])
near_ms = st.integers(NOW_MS - 200 * 86_400_000, NOW_MS + 86_400_000)
all_ms = st.integers(-(2**66), 2**66) | far_ints | near_ms | st.integers(0, ef.TIMESTAMP_MAX_MS)
offsets = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-59))])
all_dates = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC) | offsets
).map(lambda d: d.isoformat())
near_dates = near_ms.map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat())
times = all_ms | all_dates | near_dates | near_ms

leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
# Raw JSON spliced into a body: what no Python encoder produces (lone surrogates, deep nesting).
raw_values = st.sampled_from(
    [
        b'"\\ud800"',
        b'"\\udfff x"',
        b'{"k":' * 300 + b"1" + b"}" * 300,
        b"[" * 2_000 + b"]" * 2_000,
        b'{"a":' * (ef.PROPERTIES_MAX_DEPTH - 1) + b"1" + b"}" * (ef.PROPERTIES_MAX_DEPTH - 1),
        b'{"a":' * ef.PROPERTIES_MAX_DEPTH + b"1" + b"}" * ef.PROPERTIES_MAX_DEPTH,
        b'"' + b"y" * (ef.PROPERTY_STRING_MAX_CHARS + 1) + b'"',
        b"123456789012345678901234567890",
        b"1e400",
        b"-0.0",
    ]
)
FIXED_IDS = [str(uuid.UUID(int=i)) for i in range(1, 4)]  # shared ids: duplicates within and across batches
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "eventId": st.sampled_from(FIXED_IDS) | st.uuids().map(str) | texts,
    "type": st.sampled_from(sorted(ef.PLAYBACK_TYPES)) | st.from_regex(r"\A[a-z][a-z0-9_.]{0,64}\Z") | texts,
    "userId": texts,
    "sessionId": texts,
    "videoId": texts,
    "timestamp": times,
    "positionMs": st.integers(0, 2**40) | far_ints,
    "bitrateKbps": st.integers(0, 100_000) | far_ints,
    "renditionHeight": st.integers(ef.PIXELS_MIN - 1, ef.PIXELS_MAX + 1) | far_ints | st.floats(0, 5000),
    "playerWidth": st.integers(ef.PIXELS_MIN - 1, ef.PIXELS_MAX + 1) | far_ints | st.booleans(),
    "errorCode": texts,
    "errorMessage": texts | st.just("m" * (ef.ERROR_MESSAGE_MAX_CHARS + 1)),
    "fatal": st.booleans() | st.none(),
    "device": texts,
    "country": texts,
    "properties": st.dictionaries(texts, json_values, max_size=5)
    | st.dictionaries(st.integers(0, 99).map(str), st.just(1), min_size=64, max_size=66),
}


@st.composite
def event_bytes(draw: st.DrawFn, *, ids: st.SearchStrategy[Any] = FIELDS["eventId"]) -> bytes:
    """One event's JSON, mostly plausible, often broken; ``ids`` draws its eventId."""
    event = {name: draw(FIELDS[name]) for name in ("type", "userId", "timestamp")}
    event["eventId"] = draw(ids)
    if event["type"] in ef.PLAYBACK_TYPES or draw(st.booleans()):
        event["sessionId"] = draw(FIELDS["sessionId"])
        event["videoId"] = draw(FIELDS["videoId"])
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True)):
        event[name] = draw(FIELDS[name])
    raw = json_encode(event)
    if draw(st.integers(0, 5)) == 0:  # one field replaced by raw JSON
        name = draw(st.sampled_from(["properties", "userId", "videoId", "timestamp", "positionMs", "errorMessage"]))
        value = draw(raw_values)
        if name == "properties":
            value = b'{"p":' + value + b"}"
        event.pop(name, None)
        raw = json_encode(event)[:-1] + (b"," if event else b"") + b'"' + name.encode() + b'":' + value + b"}"
    return raw


def json_encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits: the standard library writes them
        return json.dumps(value).encode()


bodies = st.builds(
    lambda events, sent_at: (
        b'{"events":['
        + b",".join(events)
        + b"]"
        + (b',"sentAt":' + json_encode(sent_at) if sent_at is not None else b"")
        + b"}"
    ),
    st.lists(event_bytes(), min_size=1, max_size=8),
    st.none() | times,
)
