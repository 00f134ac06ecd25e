"""Bodies refused as a whole: each kind of bad input gets its status and a machine-readable code."""

from __future__ import annotations

import gzip
from typing import Any

import pytest
from django.test import Client

from tests.ingest.conftest import body_of, event_make

pytestmark = [pytest.mark.usefixtures("ingest_open")]


def post(client: Client, body: bytes, content_type: str = "application/json", **headers: Any) -> Any:
    return client.post("/events", data=body, content_type=content_type, **headers)


def assert_batch_error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["accepted"] == 0
    [error] = body["errors"]
    assert error["index"] is None
    assert error["code"] == code
    assert error["field"] == field
    return body


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b'{"events": [', "malformed_json", None),
        (b" ", "malformed_json", None),
        (b'{"events": []} x', "malformed_json", None),
        (b"\xef\xbb\xbf{}", "malformed_json", None),
        (b'[{"eventId": "x"}]', "invalid_batch", None),
        (b'"events"', "invalid_batch", None),
        (b"{}", "required", "events"),
        (b'{"events": {"0": {}}}', "invalid_type", "events"),
        (b'{"events": [], "sentAt": "soon"}', "invalid_timestamp", "sentAt"),
        (b'{"events": [], "sentAt": true}', "invalid_type", "sentAt"),
        (b'{"events": [], "sentAt": "9999-12-31T23:59:59Z"}', "invalid_timestamp", "sentAt"),
        (b'{"events": [], "sentAt": -1}', "invalid_timestamp", "sentAt"),
        # Nested deeper than the decoder goes, outside the events array.
        (b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b', "events": []}', "too_deep", None),
    ],
)
def test_not_a_batch_is_400(client: Client, body: bytes, code: str, field: str | None) -> None:
    assert_batch_error(post(client, body), 400, code, field)


def test_non_utf8_body_is_400(client: Client) -> None:
    body = body_of([event_make()]).replace(b"desktop", b"desk\xfftop")
    assert_batch_error(post(client, body), 400, "invalid_encoding")


def test_latin1_body_is_400(client: Client) -> None:
    body = body_of([event_make(device="caf\u00e9")]).decode().encode("latin-1")
    assert_batch_error(post(client, body), 400, "invalid_encoding")


def test_bad_gzip_is_400(client: Client) -> None:
    assert_batch_error(post(client, b"not gzip at all", HTTP_CONTENT_ENCODING="gzip"), 400, "invalid_gzip")
    truncated = gzip.compress(body_of([event_make()]))[:-12]
    assert_batch_error(post(client, truncated, HTTP_CONTENT_ENCODING="gzip"), 400, "invalid_gzip")


def test_empty_batch_is_400(client: Client) -> None:
    response = post(client, b'{"events": []}')
    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "empty_batch", "message": "the batch holds no events", "field": "events"},
        "accepted": 0,
        "rejected": 0,
        "errors": [],
    }


def test_every_event_rejected_is_400_with_each_error(client: Client) -> None:
    events = [event_make(eventId="nope"), event_make(type="Bad!"), event_make(userId=7)]
    response = post(client, body_of(events))
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "all_rejected"
    assert (body["accepted"], body["rejected"]) == (0, 3)
    assert [(e["index"], e["field"], e["code"]) for e in body["errors"]] == [
        (0, "eventId", "invalid_uuid"),
        (1, "type", "unknown_type"),
        (2, "userId", "invalid_type"),
    ]


def test_too_many_events_is_413(client: Client) -> None:
    events = [event_make() for _ in range(1001)]
    response = post(client, body_of(events))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_events"
    # The slow path (one invalid event among too many) says the same.
    events[5]["eventId"] = "bad"
    assert post(client, body_of(events)).json()["error"]["code"] == "too_many_events"


def test_oversized_body_is_413_plain_and_gzipped(client: Client, settings: Any) -> None:
    big = body_of([event_make(properties={"blob": "x" * 60_000}) for _ in range(90)])  # ~5.4 MB
    assert len(big) > settings.INGEST_MAX_BODY_BYTES
    response = post(client, big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    # A gzip bomb: small on the wire, over the limit once inflated; refused without inflating it all.
    bomb = gzip.compress(b" " * (settings.INGEST_MAX_BODY_BYTES + 10))
    assert len(bomb) < 10_000
    response = post(client, bomb, HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_wrong_content_type_is_415(client: Client, content_type: str) -> None:
    response = post(client, body_of([event_make()]), content_type)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_unknown_content_encoding_is_415(client: Client) -> None:
    response = post(client, body_of([event_make()]), HTTP_CONTENT_ENCODING="br")
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_encoding"


def test_get_is_405_json(client: Client) -> None:
    response = client.get("/events")
    assert response.status_code == 405
    # OPTIONS answers browsers' CORS preflight for write keys.
    assert response["Allow"] == "POST, OPTIONS"
    assert response.json()["error"]["code"] == "method_not_allowed"
