"""A local span store fed over OTLP/HTTP: traces visible on a laptop with no collector to set up.

``manage.py otlp_receiver`` runs :class:`ReceiverServer`: ``POST /v1/traces`` with an
``ExportTraceServiceRequest`` (protobuf, what the SDK's OTLP/HTTP exporter sends), decoded with
opentelemetry-proto, every span stored as a row of a SQLite file under ``var/``.
``manage.py traces_show`` reads it back as trees. It listens on loopback only, and when
``OTEL_EXPORTER_OTLP_TOKEN`` is set requires it as a bearer token: spans carry statement shapes
and URLs, and nothing else on the network should be able to read or fill the store.

Not a production collector: no retention beyond ``max_spans`` (oldest dropped), one file.
"""

from __future__ import annotations

import gzip
import hmac
import io
import json
import sqlite3
import sys
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

# An exporter batch is at most 512 spans, well under 1 MiB; anything much larger is not a span batch.
MAX_BODY_BYTES = 8 * 1024 * 1024
KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    service TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    attributes TEXT NOT NULL,
    links TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_trace ON spans (trace_id);
"""
_SELECT = (
    "SELECT trace_id, span_id, parent_span_id, name, kind, service, start_ns, end_ns, status, attributes, links"
    " FROM spans "
)


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class StoredSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    links: list[dict[str, str]]
    children: list[StoredSpan] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class SpanStore:
    """Spans in one SQLite file; safe for the receiver's threads (one connection, one lock)."""

    def __init__(self, path: Path, *, max_spans: int = 200_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._max_spans = max_spans

    def close(self) -> None:
        self._db.close()

    def export_store(self, request: ExportTraceServiceRequest) -> int:
        rows = []
        for resource_spans in request.resource_spans:
            service = str(_attributes(resource_spans.resource.attributes).get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    links = [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()} for link in span.links]
                    rows.append(
                        (
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            KIND_NAMES.get(span.kind, str(span.kind)),
                            service,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                            {0: "unset", 1: "ok", 2: "error"}.get(span.status.code, str(span.status.code)),
                            json.dumps(_attributes(span.attributes), default=str),
                            json.dumps(links),
                        )
                    )
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO spans (trace_id, span_id, parent_span_id, name, kind, service, start_ns, end_ns,"
                " status, attributes, links) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute(
                "DELETE FROM spans WHERE seq <= (SELECT max(seq) FROM spans) - ?",
                (self._max_spans,),
            )
            self._db.execute("COMMIT")
        return len(rows)

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[StoredSpan]:
        with self._lock:
            rows = self._db.execute(_SELECT + sql, params).fetchall()  # ``sql``: constant clauses, values bound
        return [
            StoredSpan(
                trace_id=row[0],
                span_id=row[1],
                parent_span_id=row[2],
                name=row[3],
                kind=row[4],
                service=row[5],
                start_ns=row[6],
                end_ns=row[7],
                status=row[8],
                attributes=json.loads(row[9]),
                links=json.loads(row[10]),
            )
            for row in rows
        ]

    def spans(self, trace_id: str | None = None) -> list[StoredSpan]:
        if trace_id is None:
            return self._rows("ORDER BY start_ns", ())
        return self._rows("WHERE trace_id = ? ORDER BY start_ns", (trace_id.lower(),))

    def linked_traces(self, trace_id: str) -> set[str]:
        """Trace ids one link away from ``trace_id``, in either direction."""
        found = {link["trace_id"] for span in self.spans(trace_id) for link in span.links}
        pattern = f'%"trace_id": "{trace_id.lower()}"%'
        found |= {span.trace_id for span in self._rows("WHERE links LIKE ?", (pattern,))}
        found.discard(trace_id.lower())
        return found

    def connected_traces(self, trace_id: str, *, limit: int = 50) -> list[str]:
        """``trace_id`` and every trace reachable from it through links (breadth first, at most ``limit``)."""
        order = [trace_id.lower()]
        seen = set(order)
        for current in order:
            if len(order) >= limit:
                break
            for other in sorted(self.linked_traces(current)):
                if other not in seen and len(order) < limit:
                    seen.add(other)
                    order.append(other)
        return order

    def recent_traces(self, limit: int = 20) -> list[StoredSpan]:
        """The root spans of the latest traces, newest first."""
        return self._rows("WHERE parent_span_id = '' ORDER BY start_ns DESC LIMIT ?", (limit,))


def tree(spans: list[StoredSpan]) -> list[StoredSpan]:
    """The roots of ``spans`` with their children attached (a span whose parent is missing is a root)."""
    by_id = {span.span_id: span for span in spans}
    roots = []
    for span in spans:
        parent = by_id.get(span.parent_span_id)
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    return roots


def tree_lines(roots: list[StoredSpan], *, depth: int = 0) -> Iterator[str]:
    for span in roots:
        links = "".join(f" -> link {link['trace_id']}/{link['span_id']}" for link in span.links[:3])
        if len(span.links) > 3:
            links += f" (+{len(span.links) - 3} links)"
        status = " ERROR" if span.status == "error" else ""
        yield (
            f"{'  ' * depth}{span.name} [{span.service} {span.kind}] {span.duration_ms:.2f} ms{status}"
            f" span={span.span_id}{links}"
        )
        query = span.attributes.get("db.query.text")
        if query:
            yield f"{'  ' * (depth + 2)}{' '.join(str(query).split())[:200]}"
        yield from tree_lines(span.children, depth=depth + 1)


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one line per exporter batch would be noise."""

    def _answer(self, status: HTTPStatus, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path.split("?")[0] != "/v1/traces":
            self._answer(HTTPStatus.NOT_FOUND, b"only /v1/traces")
            return
        token = self.server.token
        if token and not hmac.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
            self._answer(HTTPStatus.UNAUTHORIZED, b"bearer token required")
            return
        if "protobuf" not in self.headers.get("Content-Type", ""):
            self._answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"application/x-protobuf only")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._answer(HTTPStatus.LENGTH_REQUIRED, b"Content-Length required")
            return
        if length < 0 or length > MAX_BODY_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, b"too large")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        encoding = self.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = _gunzip_bounded(body)
            elif encoding == "deflate":
                body = _inflate_bounded(body)
            elif encoding not in {"", "identity"}:
                self._answer(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, b"gzip, deflate or none")
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
        except (DecodeError, OSError, EOFError, zlib.error, ValueError):
            self._answer(HTTPStatus.BAD_REQUEST, b"not an ExportTraceServiceRequest")
            return
        self.server.store.export_store(request)
        self._answer(HTTPStatus.OK, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")


def _gunzip_bounded(body: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
        out = stream.read(MAX_BODY_BYTES + 1)
    if len(out) > MAX_BODY_BYTES:
        raise ValueError("inflates past the limit")
    return out


def _inflate_bounded(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(body, MAX_BODY_BYTES + 1)
    if len(out) > MAX_BODY_BYTES:
        raise ValueError("inflates past the limit")
    return out


class ReceiverServer(ThreadingHTTPServer):
    """The OTLP/HTTP receiver, bound to 127.0.0.1 (never another address)."""

    daemon_threads = True

    def __init__(self, store: SpanStore, *, port: int, token: str = "") -> None:
        self.store = store
        self.token = token
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exporter that went away mid-request (its process stopped) is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
