"""CMCD (CTA-5004) keys on an event (``cmcd``): accepted and forwarded as sent, refused per event
when a key breaks its type or bound, unknown keys dropped; through the real broker."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest
from django.test import Client

from analytics_platform import event_format
from ingest import schema
from tests.ingest.conftest import TopicReader, body_of, event_make, events_of

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ingest_open", "fast_producer")]

FULL = {
    "br": 3200, "bl": 8300, "bs": True, "cid": "video-42", "d": 4004, "dl": 1800, "mtp": 25400,
    "nor": "../seg-0043.m4s", "nrr": "12323-48763", "ot": "av", "pr": 1.25, "rtp": 15000, "sf": "h",
    "sid": str(uuid.uuid4()), "st": "v", "su": False, "tb": 6000, "v": 1,
}  # fmt: skip


def test_the_struct_holds_event_formats_keys() -> None:
    keys = {f.name for f in msgspec.structs.fields(schema.Cmcd)}
    assert set(event_format.CMCD_INTEGER_KEYS) | set(event_format.CMCD_BOOLEAN_KEYS) <= keys
    assert keys == set(FULL)


def test_cmcd_is_forwarded_as_sent_and_unknown_keys_dropped(client: Client, topic_reader: TopicReader) -> None:
    user = f"user-{uuid.uuid4().hex}"
    events = [
        event_make(userId=user, cmcd={**FULL, "-com.example-x": 1, "zz": "?"}),
        event_make(userId=user, cmcd={"bl": 0, "nrr": "100-"}),
        event_make(userId=user, cmcd={}),
        event_make(userId=user),
    ]
    response = client.post("/events", data=body_of(events), content_type="application/json")
    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 4
    stored = events_of(topic_reader.messages_for({user}, expected=1), {user})
    assert [e.get("cmcd") for e in stored] == [FULL, {"bl": 0, "nrr": "100-"}, {}, None]


BAD = [
    ({"br": -1}, "cmcd.br", "out_of_range"),
    ({"bl": 2**53 + 1}, "cmcd.bl", "out_of_range"),
    ({"mtp": 1.5}, "cmcd.mtp", "invalid_type"),
    ({"tb": "6000"}, "cmcd.tb", "invalid_type"),
    ({"bs": "true"}, "cmcd.bs", "invalid_type"),
    ({"su": 1}, "cmcd.su", "invalid_type"),
    ({"sid": "s" * 65}, "cmcd.sid", "too_long"),
    ({"cid": "c" * 65}, "cmcd.cid", "too_long"),
    ({"nor": "n" * (event_format.CMCD_NOR_MAX_CHARS + 1)}, "cmcd.nor", "too_long"),
    ({"nrr": "-500"}, "cmcd.nrr", "invalid_value"),
    ({"nrr": "1-2-3"}, "cmcd.nrr", "invalid_value"),
    ({"nrr": "1" * 40 + "-"}, "cmcd.nrr", "too_long"),
    ({"ot": "video"}, "cmcd.ot", "invalid_value"),
    ({"ot": "AV"}, "cmcd.ot", "invalid_value"),
    ({"sf": "x"}, "cmcd.sf", "invalid_value"),
    ({"st": "live"}, "cmcd.st", "invalid_value"),
    ({"pr": -0.5}, "cmcd.pr", "out_of_range"),
    ({"v": 0}, "cmcd.v", "out_of_range"),
    ({"sid": None}, "cmcd.sid", "invalid_type"),
    ([1, 2], "cmcd", "invalid_type"),
    ("br=3200,bl=8300", "cmcd", "invalid_type"),
]


@pytest.mark.parametrize(("cmcd", "field", "code"), BAD, ids=[f"{f}-{c}-{i}" for i, (_, f, c) in enumerate(BAD)])
def test_a_malformed_key_refuses_its_event_only(
    client: Client, topic_reader: TopicReader, cmcd: Any, field: str, code: str
) -> None:
    user = f"user-{uuid.uuid4().hex}"
    good = event_make(userId=user, cmcd={"br": 1000})
    bad = event_make(userId=user, cmcd=cmcd)
    response = client.post("/events", data=body_of([bad, good]), content_type="application/json")
    assert response.status_code == 202, response.content
    result = response.json()
    assert (result["accepted"], result["rejected"]) == (1, 1)
    assert [(e["index"], e["field"], e["code"]) for e in result["errors"]] == [(0, field, code)]
    stored = events_of(topic_reader.messages_for({user}, expected=1), {user})
    assert [e["eventId"] for e in stored] == [good["eventId"]]


def test_a_rate_beyond_a_double_is_refused(client: Client) -> None:
    raw = body_of([event_make(cmcd={"pr": 0})]).replace(b'"pr":0', b'"pr":1e400')
    response = client.post("/events", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert [(e["field"], e["code"]) for e in response.json()["errors"]] == [("cmcd.pr", "out_of_range")]
