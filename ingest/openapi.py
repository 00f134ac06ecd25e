"""The OpenAPI document of ``POST /events``, generated from the types that validate it.

``POST /events`` is a plain Django view (msgspec decodes the body for speed; see ingest/views.py),
which drf-spectacular's generator cannot see. This hook documents it from ``ingest.schema``'s
msgspec structs, the very ones ingest decodes with, so every bound in the docs (lengths, ranges,
patterns, the properties limits) is the one enforced. Only prose lives here. It adds the path
only when absent: if ingest ever becomes a DRF view with its own schema, that one wins.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from django.conf import settings

from ingest import schema

_REF = "#/components/schemas/{name}"
_ERROR = {"$ref": "#/components/schemas/IngestResponse"}
#: Set by the server; whatever a client sends there is overwritten, so they are not documented.
_SERVER_FIELDS = ("clientTimestamp", "receivedAt")
#: The contract's words for fields whose type alone does not say it (API.md).
_DESCRIPTIONS = {
    "eventId": "Deduplication key: a retry re-sends it and is counted once.",
    "type": "view_start, playing, pause, seek, rebuffer_start, rebuffer_end, bitrate_change, heartbeat, "
    "error, ended, view_end; or a custom type.",
    "userId": "The Kafka partition key: a user's events stay in order.",
    "sessionId": "Required for playback types.",
    "videoId": "Required for playback types.",
    "timestamp": "Client clock (RFC 3339 or epoch ms), corrected with the batch's sentAt when given; "
    "refused outside the accepted event-time window.",
    "fatal": "For error events; true when absent.",
    "renditionWidth": "Width in pixels of the rendition playing (the decoded picture).",
    "renditionHeight": "Height in pixels of the rendition playing (the decoded picture).",
    "playerWidth": "The player's displayed width in device pixels (CSS pixels x devicePixelRatio).",
    "playerHeight": "The player's displayed height in device pixels (CSS pixels x devicePixelRatio).",
    "properties": "Free-form custom dimensions, bounded in keys, depth and size.",
    "cmcd": "CTA-5004 Common Media Client Data keys; other keys are dropped.",
}


@cache
def _components() -> dict[str, Any]:
    (_,), components = msgspec.json.schema_components([schema.Batch], ref_template=_REF)
    event = components["Event"]
    for name in _SERVER_FIELDS:
        event["properties"].pop(name, None)
    for name, text in _DESCRIPTIONS.items():
        event["properties"][name]["description"] = text
    for component in components.values():
        component.pop("description", None)  # docstrings speak to maintainers, not to clients
    batch = components["Batch"]
    batch["properties"]["events"]["maxItems"] = schema.MAX_EVENTS_PER_BATCH
    batch["properties"]["sentAt"]["description"] = "The client's clock when it sent the batch."
    return {f"Ingest{name}": component for name, component in components.items()}


def _renamed(node: Any) -> Any:
    """msgspec names components after the structs; in the API document they are Ingest*."""
    if isinstance(node, dict):
        return {k: (v.replace("/schemas/", "/schemas/Ingest") if k == "$ref" else _renamed(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def events_endpoint_document(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add ``POST /events`` (API.md) when it is missing."""
    if "/events" in result.get("paths", {}):
        return result
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_renamed(_components()))
    schemas["IngestResponse"] = {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        k: {"type": "integer" if k == "index" else "string"}
                        for k in ("index", "field", "code", "message")
                    },
                },
            },
            "error": {"type": "object", "description": "Present on 4xx/5xx other than partial rejection"},
        },
    }

    def response(description: str) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": _ERROR}}}

    result.setdefault("paths", {})["/events"] = {
        "post": {
            "operationId": "events_ingest",
            "summary": "Ingest a batch of events",
            "description": (
                f"At most {schema.MAX_EVENTS_PER_BATCH} events and {settings.INGEST_MAX_BODY_BYTES // 2**20} MiB "
                "decompressed per request; `Content-Encoding: gzip` accepted. "
                "202 only after every accepted event is acknowledged by Kafka (acks=all); valid events of a "
                "batch are accepted even when others are rejected; duplicates (same `eventId`) count once."
            ),
            "tags": ["events"],
            "security": [],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/IngestBatch"}}},
            },
            "responses": {
                "202": response("Accepted: {accepted, rejected, errors}"),
                "400": response("Not a batch, or every event rejected"),
                "403": response("Client IP not allowlisted"),
                "413": response(
                    f"Body over {settings.INGEST_MAX_BODY_BYTES // 2**20} MiB "
                    f"or more than {schema.MAX_EVENTS_PER_BATCH} events"
                ),
                "415": response("Wrong content type"),
                "429": response("Rate limited"),
                "503": response("The broker could not acknowledge in time; see Retry-After"),
            },
        }
    }
    return result
