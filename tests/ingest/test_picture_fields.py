"""The picture sizes of an event (``renditionWidth``/``Height``, ``playerWidth``/``Height``):
forwarded as sent, refused per event outside event_format's bounds; through the real broker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.test import Client

from analytics_platform import event_format
from streams.processors import decoding
from tests.ingest.conftest import TopicReader, body_of, event_make, events_of

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer")]

FIELDS = ("renditionWidth", "renditionHeight", "playerWidth", "playerHeight")
SIZES = {"renditionWidth": 1280, "renditionHeight": 720, "playerWidth": 2560, "playerHeight": 1440}


def test_sizes_are_forwarded_as_sent_and_absent_ones_stay_absent(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    edges = {"renditionWidth": event_format.PIXELS_MIN, "playerHeight": event_format.PIXELS_MAX}
    events = [event_make(userId=user, **SIZES), event_make(userId=user, **edges), event_make(userId=user)]
    response = client.post("/events", data=body_of(events), content_type="application/json")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 3
    stored = events_of(topic_reader.messages_for({user}, expected=1), {user})
    assert [{f: e[f] for f in FIELDS if f in e} for e in stored] == [SIZES, edges, {}]
    # What ingest forwards, the stream processor decodes to the same values.
    decoded = [decoding.event_row(e, partition=0, offset=0) for e in stored]
    assert len(decoded) == 3


BAD: list[tuple[str, Any, str]] = [
    ("renditionWidth", 0, "out_of_range"),
    ("renditionHeight", -720, "out_of_range"),
    ("playerWidth", event_format.PIXELS_MAX + 1, "out_of_range"),
    ("playerHeight", 2**63, "out_of_range"),
    ("renditionHeight", 720.5, "invalid_type"),
    ("playerWidth", "1920", "invalid_type"),
    ("playerHeight", True, "invalid_type"),
    ("renditionWidth", None, "invalid_type"),
    ("renditionWidth", [1280], "invalid_type"),
]


@pytest.mark.parametrize(("field", "value", "code"), BAD, ids=[f"{f}-{c}-{i}" for i, (f, _, c) in enumerate(BAD)])
def test_a_hostile_size_refuses_its_event_only(
    client: Client, topic_reader: TopicReader, field: str, value: Any, code: str
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    good = event_make(userId=user, **SIZES)
    bad = event_make(userId=user, **{**SIZES, field: value})
    response = client.post("/events", data=body_of([bad, good]), content_type="application/json")
    assert response.status_code == 202, response.content
    result = response.json()
    assert (result["accepted"], result["rejected"]) == (1, 1)
    assert [(e["index"], e["field"], e["code"]) for e in result["errors"]] == [(0, field, code)]
    stored = events_of(topic_reader.messages_for({user}, expected=1), {user})
    assert [e["eventId"] for e in stored] == [good["eventId"]]


def test_an_event_of_only_bad_sizes_is_a_400(client: Client) -> None:
    response = client.post("/events", data=body_of([event_make(playerWidth=-1)]), content_type="application/json")
    assert response.status_code == 400
    assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [("playerWidth", "out_of_range")]
