"""OpenAPI additions for endpoints drf-spectacular cannot see.

``POST /events`` is a plain Django view (msgspec decodes the body; see ingest/views.py), so the
generator does not find it. This hook documents it from the contract in API.md, so the schema and
the docs page cover both public endpoints. It adds the path only when absent: if ingest ever
becomes a DRF view with its own schema, that one wins.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/IngestResponse"}

_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["eventId", "type", "userId", "timestamp"],
    "properties": {
        "eventId": {"type": "string", "format": "uuid", "description": "Deduplication key; a retry re-sends it."},
        "type": {
            "type": "string",
            "description": "view_start, playing, pause, seek, rebuffer_start, rebuffer_end, bitrate_change, "
            "heartbeat, error, ended, view_end; or a custom type matching ^[a-z][a-z0-9_.]{0,63}$",
        },
        "userId": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Kafka partition key"},
        "sessionId": {"type": "string", "minLength": 1, "maxLength": 128, "description": "Required for playback types"},
        "videoId": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Required for playback types"},
        "timestamp": {
            "oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "description": "epoch ms"}],
            "description": "Client clock, corrected with sentAt when given",
        },
        "positionMs": {"type": "integer", "minimum": 0},
        "bitrateKbps": {"type": "integer", "minimum": 0},
        "errorCode": {"type": "string"},
        "errorMessage": {"type": "string"},
        "fatal": {"type": "boolean", "default": True, "description": "For error events"},
        **{dim: {"type": "string"} for dim in ("device", "os", "browser", "country", "cdn", "player")},
        "properties": {"type": "object", "maxProperties": 64},
    },
}


def events_endpoint_document(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: add ``POST /events`` (API.md) when it is missing."""
    if "/events" in result.get("paths", {}):
        return result
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["IngestEvent"] = _EVENT
    schemas["IngestBatch"] = {
        "type": "object",
        "required": ["events"],
        "properties": {
            "sentAt": {"type": "string", "format": "date-time"},
            "events": {"type": "array", "maxItems": 1000, "items": {"$ref": "#/components/schemas/IngestEvent"}},
        },
    }
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
                "At most 1000 events and 5 MiB decompressed per request; `Content-Encoding: gzip` accepted. "
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
                "413": response("Body over 5 MiB or more than 1000 events"),
                "415": response("Wrong content type"),
                "429": response("Rate limited"),
                "503": response("The broker could not acknowledge in time; see Retry-After"),
            },
        }
    }
    return result
