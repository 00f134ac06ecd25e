"""The bounds of an event at ingest, through the real broker: each one can fail, and the valid
events beside a refused one are still accepted and on the topic.

* the accepted event-time window (after the sentAt correction) and the stored time range of raw
  client times and sentAt;
* properties: keys, depth, string and total sizes, integers;
* nesting at any depth anywhere in a body (never a RecursionError, never a 500);
* gzip: members, linear work, truncation, the decompressed size limit.
"""

from __future__ import annotations

import gzip
import itertools
import time
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from analytics_platform import event_format
from ingest import schema, services
from tests.ingest.conftest import TopicReader, body_of, event_make, events_of

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer")]

DAY_MS = 86_400_000


def post(client: Client, body: bytes, **headers: Any) -> Any:
    return client.post("/events", data=body, content_type="application/json", **headers)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def errors_of(response: Any) -> list[tuple[int | None, str | None, str]]:
    return [(e["index"], e["field"], e["code"]) for e in response.json()["errors"]]


def assert_on_topic(reader: TopicReader, user: str, expected_ids: list[str]) -> list[dict[str, Any]]:
    """Exactly ``expected_ids`` of ``user`` reached the broker (in order)."""
    events = events_of(reader.messages_for({user}, expected=1), {user})
    assert [e["eventId"] for e in events] == expected_ids
    return events


# --- the event-time window ------------------------------------------------------------------


def test_events_outside_the_window_are_rejected_alone_with_a_message_naming_it(
    client: Client, topic_reader: TopicReader
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    now = now_ms()
    inside = [
        event_make(userId=user, timestamp=now - 89 * DAY_MS),
        event_make(userId=user, timestamp=now + 5 * 60_000),
        event_make(userId=user, timestamp=datetime.fromtimestamp((now - DAY_MS) / 1000, UTC).isoformat()),
    ]
    outside = [
        event_make(userId=user, timestamp=now - 91 * DAY_MS),  # past the raw events' TTL
        event_make(userId=user, timestamp=now + 11 * 60_000),
        event_make(userId=user, timestamp=0),  # 1970: in the stored range, far out of the window
        event_make(userId=user, timestamp="2199-12-31T23:59:59.999Z"),
    ]
    response = post(client, body_of(inside + outside))
    assert response.status_code == 202, response.content
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (3, 4)
    assert errors_of(response) == [(i, "timestamp", "timestamp_out_of_range") for i in range(3, 7)]
    message = body["errors"][0]["message"]
    assert message.startswith("timestamp must lie between ")
    assert "no older than 90 days, no more than 10 minutes ahead" in message
    assert_on_topic(topic_reader, user, [e["eventId"] for e in inside])


def test_the_window_applies_to_the_time_after_the_sent_at_correction(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    # A phone whose clock is five years behind: its own times are out of the window, the corrected
    # ones are not.
    behind = 5 * 365 * DAY_MS
    client_now = now_ms() - behind
    good = event_make(userId=user, timestamp=client_now - 1000)
    # Sent a year before sentAt (by the client's clock): a year old once corrected.
    stale = event_make(userId=user, timestamp=client_now - 365 * DAY_MS)
    # An hour after sentAt: in the future once corrected.
    ahead = event_make(userId=user, timestamp=client_now + 3_600_000)
    response = post(client, body_of([good, stale, ahead], sentAt=client_now))
    assert response.status_code == 202, response.content
    assert errors_of(response) == [
        (1, "timestamp", "timestamp_out_of_range"),
        (2, "timestamp", "timestamp_out_of_range"),
    ]
    assert response.json()["errors"][0]["message"].startswith(
        "timestamp (after the sentAt correction) must lie between"
    )
    [stored] = assert_on_topic(topic_reader, user, [good["eventId"]])
    assert stored["clientTimestamp"] == good["timestamp"]
    assert abs(stored["timestamp"] - (now_ms() - 1000)) < 10_000


def test_the_window_follows_its_settings(client: Client, topic_reader: TopicReader, settings: Any) -> None:
    settings.EVENTS_RETENTION_DAYS = 2
    settings.INGEST_EVENT_MAX_FUTURE_SECONDS = 0
    user = f"user-{uuid.uuid4().hex}"
    now = now_ms()
    events = [
        event_make(userId=user, timestamp=now - DAY_MS),
        event_make(userId=user, timestamp=now - 3 * DAY_MS),
        event_make(userId=user, timestamp=now + 60_000),
    ]
    response = post(client, body_of(events))
    assert response.status_code == 202, response.content
    assert errors_of(response) == [
        (1, "timestamp", "timestamp_out_of_range"),
        (2, "timestamp", "timestamp_out_of_range"),
    ]
    assert "no older than 2 days, no more than 0 seconds ahead" in response.json()["errors"][0]["message"]
    assert_on_topic(topic_reader, user, [events[0]["eventId"]])


def test_an_event_outside_the_window_does_not_claim_its_event_id(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    bad = event_make(userId=user, timestamp=now_ms() - 100 * DAY_MS)
    good = dict(bad, timestamp=now_ms())
    response = post(client, body_of([bad, good]))
    assert response.status_code == 202, response.content
    assert errors_of(response) == [(0, "timestamp", "timestamp_out_of_range")]
    assert_on_topic(topic_reader, user, [good["eventId"]])


RAW_TIMES = [
    # (timestamp as sent, code): raw client times outside the stored range, or not times at all
    (-1, "invalid_timestamp"),
    (-(2**63), "invalid_timestamp"),
    (event_format.TIMESTAMP_MAX_MS + 1, "invalid_timestamp"),
    (2**64, "invalid_timestamp"),
    (2**70, "invalid_timestamp"),
    (10**40, "invalid_timestamp"),
    ("0001-01-01T00:00:00Z", "invalid_timestamp"),
    ("0001-01-01T00:00:00+23:59", "invalid_timestamp"),
    ("1969-12-31T23:59:59.999Z", "invalid_timestamp"),
    ("2200-01-01T00:00:00.001Z", "invalid_timestamp"),
    ("9999-12-31T23:59:59.999-23:59", "invalid_timestamp"),
    ("1700000000000", "invalid_timestamp"),  # digits as a string: not RFC 3339
    ("", "invalid_timestamp"),
    (1.7e12, "invalid_type"),
    (1700000000000.0, "invalid_type"),
    (True, "invalid_type"),
    (None, "invalid_type"),
    ([1700000000000], "invalid_type"),
]


def test_raw_times_outside_the_stored_range_are_rejected_even_when_sent_at_would_correct_them(
    client: Client, topic_reader: TopicReader
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    good = event_make(userId=user)
    events = [good] + [event_make(userId=user, timestamp=value) for value, _ in RAW_TIMES]
    for sent_at in (None, now_ms(), "2199-12-31T23:59:59Z"):
        for event in events:
            event["eventId"] = str(uuid.uuid4())
        top = {} if sent_at is None else {"sentAt": sent_at}
        if sent_at == "2199-12-31T23:59:59Z":
            good["timestamp"] = "2199-12-31T23:59:58Z"  # one second before sentAt: now, once corrected
        response = post(client, body_of(events, **top))
        assert response.status_code == 202, response.content
        assert errors_of(response) == [(i + 1, "timestamp", code) for i, (_, code) in enumerate(RAW_TIMES)]
        assert response.json()["errors"][0]["message"] == (
            "timestamp must lie between 1970-01-01T00:00:00.000Z and 2200-01-01T00:00:00.000Z "
            f"(epoch milliseconds 0 to {event_format.TIMESTAMP_MAX_MS})"
        )
    stored = events_of(topic_reader.messages_for({user}, expected=1, settle=2.0), {user})
    assert len(stored) == 3
    for event in stored:
        assert event_format.TIMESTAMP_MIN_MS <= event["clientTimestamp"] <= event_format.TIMESTAMP_MAX_MS
        assert abs(event["timestamp"] - now_ms()) < 60_000


@pytest.mark.parametrize(
    "sent_at",
    [
        -1,
        2**64,
        2**70,
        event_format.TIMESTAMP_MAX_MS + 1,
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
    ],
)
def test_a_sent_at_outside_the_stored_range_refuses_the_body(client: Client, sent_at: Any) -> None:
    # sentAt corrects every event of the batch: a wrong one is the client's bug, answered 400 like a
    # sentAt that is not a time at all (nothing is accepted, the client sees why).
    events = [event_make(timestamp="0001-01-01T00:00:00Z"), event_make()]
    response = post(client, body_of(events, sentAt=sent_at))
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"]["code"] == "invalid_timestamp"
    assert body["error"]["field"] == "sentAt"
    assert "sentAt must lie between 1970-01-01T00:00:00.000Z and 2200-01-01T00:00:00.000Z" in body["error"]["message"]
    assert body["accepted"] == 0


@pytest.mark.parametrize("sent_at", [1.5, True, "1700000000000", [1], {"a": 1}])
def test_a_sent_at_that_is_not_a_time_refuses_the_body(client: Client, sent_at: Any) -> None:
    response = post(client, body_of([event_make()], sentAt=sent_at))
    assert response.status_code == 400, response.content
    assert response.json()["error"]["field"] == "sentAt"
    assert response.json()["error"]["code"] in {"invalid_type", "invalid_timestamp"}


any_time = (
    st.integers(-(2**70), 2**70)
    | st.integers(event_format.TIMESTAMP_MIN_MS - 10, event_format.TIMESTAMP_MAX_MS + 10)
    | st.integers(0, 2 * event_format.TIMESTAMP_MAX_MS).map(lambda ms: now_ms() + ms % (400 * DAY_MS) - 200 * DAY_MS)
    | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())
    | st.floats(allow_nan=False)
    | st.booleans()
)


@hypothesis_settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(timestamps=st.lists(any_time, min_size=1, max_size=8), sent_at=st.none() | any_time)
def test_whatever_the_times_accepted_events_lie_in_the_window_and_the_stored_range(
    timestamps: list[Any], sent_at: Any
) -> None:
    """The decode and normalisation steps on generated times (no broker: thousands of cases)."""
    events = [event_make(timestamp=value) for value in timestamps]
    body = body_of(events) if sent_at is None else body_of(events, sentAt=sent_at)
    received = now_ms()
    try:
        decoded = schema.batch_decode(body)
    except schema.BodyError as exc:
        assert exc.error.field == "sentAt"
        return
    groups, errors = services.events_prepare(decoded=decoded, received_at_ms=received)
    earliest, latest = services.event_time_window(received_at_ms=received)
    accepted = [event for group in groups.values() for event in group]
    assert len(accepted) + len(errors) == len(events)
    for event in accepted:
        assert isinstance(event.client_timestamp, int) and isinstance(event.timestamp, int)
        assert event_format.TIMESTAMP_MIN_MS <= event.client_timestamp <= event_format.TIMESTAMP_MAX_MS
        assert earliest <= event.timestamp <= latest
    for error in errors:
        assert error.field == "timestamp"
        assert error.code in {"invalid_timestamp", "invalid_type", "timestamp_out_of_range"}


# --- properties -----------------------------------------------------------------------------


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` nested arrays around ``leaf`` (built without recursion)."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


PROPERTY_LIMIT = event_format.PROPERTY_STRING_MAX_CHARS
AT_THE_LIMITS = [
    {f"k{i}": i for i in range(event_format.PROPERTIES_MAX_KEYS)},
    {"k" * event_format.PROPERTY_KEY_MAX_CHARS: 1},
    {"a": {"k" * event_format.PROPERTY_KEY_MAX_CHARS: [1]}},
    {"s": "x" * PROPERTY_LIMIT, "t": "\u00e9" * PROPERTY_LIMIT},
    {"deep": nested(event_format.PROPERTIES_MAX_DEPTH - 1)},  # the object is level 1
    {"n": event_format.INT_MAX, "m": -event_format.INT_MAX, "f": 1e308, "b": True, "z": None},
    # One byte under the encoded-size limit (3 strings of the longest, and one to fill up).
    {f"s{i}": "x" * PROPERTY_LIMIT for i in range(3)}
    | {
        "t": "y"
        * (
            event_format.PROPERTIES_MAX_BYTES
            - 1
            - len(msgspec.json.encode({f"s{i}": "x" * PROPERTY_LIMIT for i in range(3)} | {"t": ""}))
        )
    },
]
BEYOND = [
    ({f"k{i}": i for i in range(event_format.PROPERTIES_MAX_KEYS + 1)}, "properties_too_large"),
    ({"k" * (event_format.PROPERTY_KEY_MAX_CHARS + 1): 1}, "properties_too_large"),
    ({"a": [{"k" * (event_format.PROPERTY_KEY_MAX_CHARS + 1): 1}]}, "properties_too_large"),
    ({"s": "x" * (PROPERTY_LIMIT + 1)}, "properties_too_large"),
    ({"a": {"b": ["x" * (PROPERTY_LIMIT + 1)]}}, "properties_too_large"),
    ({f"s{i}": "x" * PROPERTY_LIMIT for i in range(4)}, "properties_too_large"),  # over the bytes limit
    ({f"s{i}": "\u0001" * 2000 for i in range(3)}, "properties_too_large"),  # escapes: 6 bytes a char
    ({"n": event_format.INT_MAX + 1}, "properties_too_large"),
    ({"n": [2**64]}, "properties_too_large"),
    ({"n": -(2**70)}, "properties_too_large"),
    ({"deep": nested(event_format.PROPERTIES_MAX_DEPTH)}, "properties_too_deep"),
    ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}, "properties_too_deep"),
    ({"": 1}, "too_short"),
    ({"a": {"": 1}}, "too_short"),
]


def test_properties_at_the_limits_are_accepted_and_beyond_them_rejected_alone(
    client: Client, topic_reader: TopicReader
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    good = [event_make(userId=user, properties=properties) for properties in AT_THE_LIMITS]
    bad = [event_make(userId=user, properties=properties) for properties, _ in BEYOND]
    assert len(msgspec.json.encode(good[-1]["properties"])) == event_format.PROPERTIES_MAX_BYTES - 1
    response = post(client, body_of(good + bad))
    assert response.status_code == 202, response.content
    assert errors_of(response) == [(len(good) + i, "properties", code) for i, (_, code) in enumerate(BEYOND)]
    assert all(e["message"] for e in response.json()["errors"])
    stored = assert_on_topic(topic_reader, user, [e["eventId"] for e in good])
    assert [e["properties"] for e in stored] == [e["properties"] for e in good]


def test_a_number_beyond_a_double_in_properties_is_properties_too_large(client: Client) -> None:
    good = msgspec.json.encode(event_make())
    body = b'{"events":[' + good + b"," + with_field(event_make(), "properties", b'{"x":[1e400]}') + b"]}"
    response = post(client, body)
    assert response.status_code == 202, response.content
    assert errors_of(response) == [(1, "properties", "properties_too_large")]


# --- nesting --------------------------------------------------------------------------------


def deep_json(levels: int, kind: str = "array") -> bytes:
    if kind == "array":
        return b"[" * levels + b"1" + b"]" * levels
    return b'{"a":' * levels + b"1" + b"}" * levels


def with_field(event: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``event`` as JSON with ``name`` set to the raw JSON ``raw`` (not built as Python objects)."""
    return (
        msgspec.json.encode({k: v for k, v in event.items() if k != name})[:-1]
        + b',"'
        + name.encode()
        + b'":'
        + raw
        + b"}"
    )


@pytest.mark.parametrize("levels", [300, 10_000])
@pytest.mark.parametrize("kind", ["array", "object"])
def test_deep_nesting_in_an_event_is_a_per_event_error_and_the_rest_is_accepted(
    client: Client, topic_reader: TopicReader, levels: int, kind: str
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    deep = deep_json(levels, kind)
    first, last = event_make(userId=user), event_make(userId=user)
    # (the event, the fields and codes it may get): which one depends on whether msgspec can still
    # decode the nesting (300 levels) or the scan refuses the event unread (10,000).
    cases: list[tuple[bytes, set[str | None], set[str]]] = [
        (
            with_field(event_make(userId=user), "properties", b'{"x":' + deep + b"}"),
            {"properties"},
            {"properties_too_deep"},
        ),
        (
            with_field(event_make(userId=user), "properties", deep),
            {"properties"},
            {"invalid_type", "properties_too_deep"},
        ),
        (with_field(event_make(userId=user), "userId", deep), {"userId"}, {"invalid_type", "too_deep"}),
        (with_field(event_make(userId=user), "timestamp", deep), {"timestamp"}, {"invalid_type", "too_deep"}),
        # A bare nested value in place of an event (an object of one unknown field lacks eventId).
        (deep, {None, "eventId"}, {"invalid_type", "required", "too_deep"}),
    ]
    body = (
        b'{"events":['
        + b",".join([msgspec.json.encode(first)] + [raw for raw, _, _ in cases] + [msgspec.json.encode(last)])
        + b"]}"
    )
    response = post(client, body)
    assert response.status_code == 202, response.content
    body_json = response.json()
    assert (body_json["accepted"], body_json["rejected"]) == (2, len(cases))
    got = body_json["errors"]
    assert [e["index"] for e in got] == list(range(1, len(cases) + 1))
    for error, (_, fields, codes) in zip(got, cases, strict=True):
        assert error["code"] in codes, error
        assert error["field"] in fields, error
    assert_on_topic(topic_reader, user, [first["eventId"], last["eventId"]])


@pytest.mark.parametrize("levels", [300, 10_000])
def test_deep_nesting_in_an_unknown_event_field(client: Client, topic_reader: TopicReader, levels: int) -> None:
    # Unknown fields are dropped unread, at any depth the decoder can skip (300 levels); deeper,
    # the event is refused (too_deep) and the others are still accepted.
    user = f"user-{uuid.uuid4().hex}"
    first, odd, last = event_make(userId=user), event_make(userId=user), event_make(userId=user)
    body = (
        b'{"events":['
        + b",".join(
            [msgspec.json.encode(first), with_field(odd, "extra", deep_json(levels)), msgspec.json.encode(last)]
        )
        + b"]}"
    )
    response = post(client, body)
    assert response.status_code == 202, response.content
    if levels == 300:
        assert response.json()["accepted"] == 3
        assert_on_topic(topic_reader, user, [first["eventId"], odd["eventId"], last["eventId"]])
    else:
        assert errors_of(response) == [(1, None, "too_deep")]
        assert_on_topic(topic_reader, user, [first["eventId"], last["eventId"]])


@pytest.mark.parametrize("levels", [300, 10_000, 2_000_000])
def test_a_deep_body_is_400_never_500(client: Client, levels: int) -> None:
    assert post(client, deep_json(levels)).json()["error"]["code"] == "invalid_batch"
    if levels <= 10_000:  # 2,000,000 levels of objects would be over the size limit
        response = post(client, deep_json(levels, "object"))
        assert response.status_code == 400, response.content
        assert response.json()["error"]["code"] in {"required", "too_deep", "all_rejected"}
    response = post(client, b'{"events":[' + deep_json(levels) + b"]}")  # nothing else: all rejected
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "all_rejected"
    response = post(
        client, b'{"events":[' + msgspec.json.encode(event_make()) + b'],"sentAt":' + deep_json(levels) + b"}"
    )
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "sentAt"


def test_deep_nesting_outside_the_events_array(client: Client) -> None:
    event = msgspec.json.encode(event_make())
    # An unknown top-level field the decoder can skip is dropped; one it cannot makes the body unusable.
    assert post(client, b'{"x":' + deep_json(300) + b',"events":[' + event + b"]}").status_code == 202
    response = post(client, b'{"x":' + deep_json(10_000) + b',"events":[' + event + b"]}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_deep"
    # Malformed after the deep part: still malformed.
    response = post(client, b'{"events":[' + event + b"," + deep_json(10_000) + b"] x")
    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"malformed_json", "too_deep"}
    response = post(client, b'{"events":[' + event + b"," + b"[" * 10_000)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_deep"
    response = post(client, b'{"events":[' + event + b"," + deep_json(10_000) + b',"unterminated]}')
    assert response.status_code == 400


def test_a_deep_body_with_too_many_events_is_413(client: Client) -> None:
    event = msgspec.json.encode(event_make())
    response = post(client, b'{"events":[' + deep_json(10_000) + b"," + b",".join([event] * 1001) + b"]}")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_events"


# --- gzip -----------------------------------------------------------------------------------


def test_concatenated_gzip_members_decode_up_to_the_member_limit(
    client: Client, topic_reader: TopicReader, settings: Any
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    events = [event_make(userId=user) for _ in range(10)]
    body = body_of(events)
    limit = settings.INGEST_GZIP_MAX_MEMBERS
    cuts = [len(body) * i // limit for i in range(limit + 1)]
    members = [gzip.compress(body[start:end]) for start, end in itertools.pairwise(cuts)]
    assert len(members) == limit
    response = post(client, b"".join(members), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 10
    assert_on_topic(topic_reader, user, [e["eventId"] for e in events])
    # One more member (an empty one) is refused.
    response = post(client, b"".join(members) + gzip.compress(b""), HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_gzip"
    assert f"more than {limit} gzip members" in response.json()["error"]["message"]


def test_a_body_of_empty_gzip_members_is_refused_after_the_member_limit(
    client: Client, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = gzip.compress(b"")
    body = empty * (settings.INGEST_MAX_BODY_BYTES // len(empty))  # about 5 MiB: 260,000 members
    inflaters = 0
    real = zlib.decompressobj

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal inflaters
        inflaters += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(services.zlib, "decompressobj", counting)
    started = time.process_time()
    response = post(client, body, HTTP_CONTENT_ENCODING="gzip")
    cpu = time.process_time() - started
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_gzip"
    # The work stops at the limit: one inflater per member up to it, never one per member sent.
    assert inflaters == settings.INGEST_GZIP_MAX_MEMBERS
    print(f"\n{len(body)} bytes of {len(body) // len(empty)} empty gzip members: {cpu:.4f} CPU-s for the request")


def test_gzip_truncated_garbage_and_size_limits(client: Client, settings: Any) -> None:
    good = gzip.compress(body_of([event_make()]))
    for body in (good[:-1], good[:10], good + b"\x00", good + b"garbage", good + good[:-5], b"\x1f\x8b"):
        response = post(client, body, HTTP_CONTENT_ENCODING="gzip")
        assert response.status_code == 400, (body[-10:], response.content)
        assert response.json()["error"]["code"] == "invalid_gzip"
    # The decompressed size limit holds across members, each under it.
    half = gzip.compress(b" " * (settings.INGEST_MAX_BODY_BYTES // 2 + 1))
    response = post(client, half + half, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    # Exactly at the limit, split over members: decoded (and refused only as JSON).
    limit = settings.INGEST_MAX_BODY_BYTES
    body = b'{"events":[]}'
    padded = body + b" " * (limit - len(body))
    response = post(
        client, gzip.compress(padded[: limit // 2]) + gzip.compress(padded[limit // 2 :]), HTTP_CONTENT_ENCODING="gzip"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "empty_batch"


# --- lone surrogates ----------------------------------------------------------------------------


def test_a_half_surrogate_pair_is_replaced_not_the_batch_refused(client: Client, topic_reader: TopicReader) -> None:
    """A JavaScript string cut inside an emoji (``"\\ud83d"``): the event is kept, the half is U+FFFD.

    msgspec refuses such a body as a whole, so before this one cut title lost the whole batch.
    """
    user = f"user-{uuid.uuid4().hex[:8]}"
    cut, pair, other = (event_make(userId=user, videoId=f"v{i}") for i in range(3))
    body = body_of([cut, pair, other])
    body = body.replace(b'"v0"', b'"title \\ud83d"').replace(b'"v1"', b'"\\ud83d\\ude00 and \\\\ud800 \\udc00"')
    response = post(client, body)
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 3
    events = assert_on_topic(topic_reader, user, [cut["eventId"], pair["eventId"], other["eventId"]])
    assert [e["videoId"] for e in events] == ["title \ufffd", "\U0001f600 and \\ud800 \ufffd", "v2"]
