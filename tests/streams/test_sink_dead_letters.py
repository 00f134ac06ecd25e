"""Dead letters of refused rows (plain data, no server): the event rebuilt from an ``events`` row."""

from __future__ import annotations

import orjson
import pytest
from clickhouse_driver import errors

from analytics_platform import event_format
from streams import dead_letters
from streams.processors import EVENT_COLUMNS, event_row
from streams.sink_dead_letters import event_from_row, rejected_row_dead_letter

NOW = 1_796_000_000_123
TRICKY = 'quote " backslash \\ newline \n nul \x00 é 中文 😀 \u2028'


@pytest.mark.parametrize(
    "event",
    [
        {"eventId": "00000000-0000-4000-8000-000000000001", "type": "click", "userId": "u", "timestamp": NOW},
        {
            "eventId": "00000000-0000-4000-8000-000000000002",
            "type": "error",
            "userId": TRICKY,
            "sessionId": "s",
            "videoId": "v",
            "timestamp": NOW,
            "clientTimestamp": NOW - 5,
            "positionMs": 0,
            "bitrateKbps": event_format.INT_MAX,
            "errorCode": TRICKY,
            "errorMessage": "x" * 300,
            "fatal": True,
            "device": "tv",
            "os": "ios",
            "browser": "",
            "country": "FR",
            "cdn": "c",
            "player": "p",
            "properties": {"a": [1, 2.5, None, True], "q": TRICKY, "nested": {"k": {}}},
        },
    ],
)
def test_the_event_rebuilt_from_a_row_decodes_to_the_same_row(event):
    event = {"receivedAt": NOW + 500, **event}
    row = event_row(event, partition=3, offset=7)
    rebuilt = event_from_row(dict(zip(EVENT_COLUMNS, row, strict=True)))
    assert event_row(orjson.loads(orjson.dumps(rebuilt)), partition=3, offset=7) == row


def test_a_refused_row_s_dead_letter():
    event = {"eventId": "00000000-0000-4000-8000-000000000003", "type": "click", "userId": "u-1", "timestamp": NOW}
    row = event_row({"receivedAt": NOW, **event}, partition=4, offset=9)
    error = errors.ServerException("DB::Exception: Cannot parse UUID (CANNOT_PARSE_UUID)" + "x" * 5000, 376)
    record = rejected_row_dead_letter(
        table="events", columns=EVENT_COLUMNS, row=row, error=error, topic="events", partition=4
    )
    assert (record["reason"], record["stage"], record["partition"], record["offset"]) == (
        dead_letters.CLICKHOUSE_REJECTED,
        "sink",
        4,
        9,
    )
    assert (record["eventId"], record["userId"], record["key"], record["table"]) == (
        event["eventId"],
        "u-1",
        "u-1",
        "events",
    )
    assert record["detail"].startswith("events: Code: 376.") and len(record["detail"]) == dead_letters.DETAIL_MAX_CHARS
    assert record["row"] == dict(zip(EVENT_COLUMNS, row, strict=True))
    assert orjson.loads(dead_letters.payload_bytes(record)) == {**event, "receivedAt": NOW, "clientTimestamp": NOW}
    orjson.dumps(record)  # the producer sends it as it is
