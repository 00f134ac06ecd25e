"""Generated requests (hypothesis): whatever arrives, no 5xx and every error body machine-readable.

Bodies range from valid batches with mutated fields (wrong types, lengths, unknown types, bad
UUIDs and times, extra keys, duplicates) through arbitrary JSON to arbitrary bytes, plain or
gzipped, under assorted content types. Valid events go through the real broker.
"""

from __future__ import annotations

import gzip
import os
import time
import uuid
from typing import Any

import msgspec
import pytest
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from analytics_platform import event_format

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer", "no_linger")]


@pytest.fixture
def no_linger(fast_producer: Any) -> Any:
    """Thousands of sequential requests: do not wait a coalescing window (or a linger) on each."""
    fast_producer.INGEST_PRODUCER_LINGER_MS = 0
    fast_producer.INGEST_COALESCE_MS = 0
    return fast_producer


KNOWN_CODES = {
    # per event
    "required", "invalid_type", "invalid_uuid", "invalid_timestamp", "timestamp_out_of_range", "too_long",
    "too_short", "out_of_range", "unknown_type", "properties_too_large", "properties_too_deep", "too_deep",
    "duplicate", "too_large",
    # whole body
    "malformed_json", "invalid_batch", "invalid_encoding", "invalid_gzip", "empty_batch", "all_rejected",
    "too_many_events", "unsupported_media_type", "unsupported_encoding",
}  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
FIXED_IDS = [str(uuid.UUID(int=i)) for i in range(1, 4)]  # shared ids produce duplicates
NOW_MS = int(time.time() * 1000)
# The whole representable range (and beyond), and times around now that fall in and out of the window.
times = (
    st.integers(-(2**70), 2**70)
    | st.integers(0, 8_000_000_000_000)
    | st.integers(NOW_MS - 100 * 86_400_000, NOW_MS + 3_600_000)
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
)
valid_values: dict[str, st.SearchStrategy[Any]] = {
    "eventId": st.sampled_from(FIXED_IDS) | st.uuids().map(str),
    "type": st.sampled_from(sorted(event_format.PLAYBACK_TYPES)) | st.from_regex(r"\A[a-z][a-z0-9_.]{0,63}\Z"),
    "userId": st.text(min_size=1, max_size=128),
    "sessionId": st.text(min_size=1, max_size=128),
    "videoId": st.text(min_size=1, max_size=256),
    "timestamp": times,
    "positionMs": st.integers(0, 2**40),
    "bitrateKbps": st.integers(0, 100_000),
    "errorCode": st.text(max_size=10),
    "fatal": st.booleans(),
    "device": st.text(max_size=10),
    "properties": st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=4),
}
OPTIONAL = ["positionMs", "bitrateKbps", "errorCode", "fatal", "device", "properties"]
junk = (
    json_values
    | st.text(min_size=129, max_size=300)
    | st.just("")
    | st.integers(-(2**70), -1)
    | st.dictionaries(st.text(min_size=1, max_size=6), st.integers(), min_size=65, max_size=70)
)


@st.composite
def events(draw: st.DrawFn) -> Any:
    """Mostly valid events; some with one to three fields missing or replaced by junk; a few not events."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(json_values)
    event: dict[str, Any] = {name: draw(valid_values[name]) for name in ("eventId", "type", "userId", "timestamp")}
    if event["type"] in event_format.PLAYBACK_TYPES or draw(st.booleans()):
        event["sessionId"] = draw(valid_values["sessionId"])
        event["videoId"] = draw(valid_values["videoId"])
    for name in draw(st.lists(st.sampled_from(OPTIONAL), max_size=3, unique=True)):
        event[name] = draw(valid_values[name])
    if kind <= 6:  # mutate
        for name in draw(st.lists(st.sampled_from(sorted(valid_values)), min_size=1, max_size=3, unique=True)):
            if draw(st.booleans()):
                event.pop(name, None)
            else:
                event[name] = draw(junk)
    if kind == 7:  # fields this server does not know
        event.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return event


batches = st.fixed_dictionaries(
    {"events": st.lists(events(), max_size=12)},
    optional={"sentAt": times | json_values},
)
DEEP_PLACES = ["element", "properties", "userId", "unknown", "top"]


@st.composite
def deep_batches(draw: st.DrawFn) -> bytes:
    """A batch with one value nested up to 20,000 levels somewhere (built as bytes: the encoder
    would refuse such a value too)."""
    levels = draw(st.integers(1, 20_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    deep = opener * levels + b"1" + closer * levels
    place = draw(st.sampled_from(DEEP_PLACES))
    encoded = [msgspec.json.encode(e) for e in draw(st.lists(events(), max_size=5))]
    if place == "top":
        return b'{"deep":' + deep + b',"events":[' + b",".join(encoded) + b"]}"
    if place == "element":
        item = deep
    else:
        base = msgspec.json.encode(
            {"eventId": str(uuid.uuid4()), "type": "heartbeat", "userId": "u", "timestamp": NOW_MS}
        )
        item = base[:-1] + b',"' + place.encode() + b'":' + deep + b"}"
    encoded.insert(draw(st.integers(0, len(encoded))), item)
    return b'{"events":[' + b",".join(encoded) + b"]}"


bodies = st.one_of(
    deep_batches(),
    batches.map(msgspec.json.encode),
    batches.map(msgspec.json.encode),
    batches.map(msgspec.json.encode),
    json_values.map(msgspec.json.encode),
    st.binary(max_size=200),
    batches.map(msgspec.json.encode).map(lambda b: b[: len(b) // 2]),
)
content_types = st.sampled_from(
    ["application/json"] * 8 + ["application/json; charset=utf-8", "text/plain", "", "application/x-ndjson"]
)
encodings = st.sampled_from(["", "", "", "gzip", "identity", "br", "GZIP"])


def assert_machine_readable(response: Any, sent_events: int | None) -> None:
    assert response.status_code < 500, response.content
    assert response.status_code in {202, 400, 413, 415}, response.content
    assert response["Content-Type"] == "application/json"
    body = msgspec.json.decode(response.content)
    assert isinstance(body, dict)
    if response.status_code == 202:
        assert "error" not in body
    else:
        assert isinstance(body["error"]["message"], str)
        assert body["error"]["code"] in KNOWN_CODES, body
    if "errors" in body:
        assert isinstance(body["accepted"], int) and isinstance(body["rejected"], int)
        assert len(body["errors"]) == body["rejected"] or body["errors"][0]["index"] is None
        for error in body["errors"]:
            assert set(error) == {"index", "field", "code", "message"}
            assert error["index"] is None or isinstance(error["index"], int)
            assert error["field"] is None or isinstance(error["field"], str)
            assert error["code"] in KNOWN_CODES, error
            assert isinstance(error["message"], str) and error["message"]
        if sent_events is not None and response.status_code == 202:
            assert body["accepted"] + body["rejected"] == sent_events


@settings(
    max_examples=int(os.environ.get("INGEST_FUZZ_EXAMPLES", "3000")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(body=bodies, content_type=content_types, encoding=encodings)
def test_generated_requests_never_5xx_and_errors_are_machine_readable(
    client: Client, body: bytes, content_type: str, encoding: str
) -> None:
    try:
        decoded = msgspec.json.decode(body)
        sent_events = (
            len(decoded["events"]) if isinstance(decoded, dict) and isinstance(decoded.get("events"), list) else None
        )
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        sent_events = None
    wire = gzip.compress(body) if encoding.lower() == "gzip" else body
    headers: dict[str, Any] = {"HTTP_CONTENT_ENCODING": encoding} if encoding else {}
    response = client.generic("POST", "/events", data=wire, content_type=content_type, **headers)
    event(f"HTTP {response.status_code}")
    assert_machine_readable(response, sent_events)
