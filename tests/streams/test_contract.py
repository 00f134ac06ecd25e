"""The event contract holds across the pipeline: whatever ingest accepts, the processor accepts.

Generated request bodies (hypothesis) go through ingest's own decoding, validation, clock-skew
correction and encoding (``ingest.schema`` / ``ingest.services``, no HTTP or broker: the same
functions the endpoint calls), are joined into the v2 message the coalescer would produce, and are
decoded by the stream processor. Every accepted event must come out as exactly one row with the
values ingest accepted, and no dead letter: an event answered 202 that the processor then refused
would be lost for the client, who was told it was stored.

The bodies aim at the edges: times across everything a client can write (epoch numbers far outside
any range, RFC 3339 from year 1 to 9999, with and without ``sentAt``), lengths at and past every
bound, unicode edge cases (escaped lone surrogates, NUL, non-BMP), nesting far past every limit,
integers past 64 bits, duplicates.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from analytics_platform import event_format as ef
from ingest import schema, services
from ingest.coalescer import BATCH_HEAD, BATCH_TAIL
from streams.processors import EVENT_COLUMNS, message_rows
from tests.support.hostile import NOW_MS, bodies

COLUMN = {name: index for index, name in enumerate(EVENT_COLUMNS)}


def _accepted_by_ingest(body: bytes, received_at_ms: int) -> tuple[list[schema.Event], bytes]:
    """The events ingest would acknowledge, and the v2 message value the coalescer would produce."""
    try:
        decoded = schema.batch_decode(body)
    except (schema.BodyError, schema.TooManyEvents):
        return [], b""
    groups, _errors = services.events_prepare(decoded=decoded, received_at_ms=received_at_ms)
    users, oversized = services.events_encode(groups=groups)
    too_large = {id(event) for event in oversized}
    accepted = [event for group in groups.values() for event in group if id(event) not in too_large]
    value = BATCH_HEAD + b",".join(part for _, parts in users for part, _count in parts) + BATCH_TAIL
    return accepted, value


@pytest.mark.django_db(databases=[])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=bodies, received_offset=st.integers(-5_000, 5_000))
def test_whatever_ingest_accepts_the_processor_accepts(body, received_offset):
    received_at = NOW_MS + received_offset
    accepted, value = _accepted_by_ingest(body, received_at)
    if not accepted:
        return
    decoded = message_rows(value, key=None, partition=3, offset=7)
    rows, dead = decoded.groups, decoded.dead_letters
    assert dead == [], dead
    assert not decoded.replay
    got = {row[COLUMN["event_id"]]: row for _user, user_rows in rows for row, _properties, _picture in user_rows}
    pictures = {row[COLUMN["event_id"]]: picture for _user, user_rows in rows for row, _p, picture in user_rows}
    assert sorted(map(str, got)) == sorted(str(e.event_id) for e in accepted)
    for event in accepted:
        row = got[event.event_id]
        assert row[COLUMN["user_id"]] == event.user_id
        assert row[COLUMN["ts"]] == event.timestamp
        assert row[COLUMN["client_ts"]] == event.client_timestamp
        assert row[COLUMN["received_at"]] == received_at
        assert ef.TIMESTAMP_MIN_MS <= row[COLUMN["ts"]] <= ef.TIMESTAMP_MAX_MS
        assert row[COLUMN["type"]] == event.type
        sizes = (event.rendition_width, event.rendition_height, event.player_width, event.player_height)
        expected = None if all(s is UNSET for s in sizes) else tuple(None if s is UNSET else s for s in sizes)
        assert pictures[event.event_id] == expected
        properties = row[COLUMN["properties"]]
        assert (orjson.loads(properties) if properties else {}) == (event.properties or {})
