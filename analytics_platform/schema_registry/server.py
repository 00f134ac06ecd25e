"""The HTTP side: a threaded HTTP/1.1 server, Basic authentication, TLS, and bounds on every input.

Bounds (an attacker reaching the port gets no further than these): ``MAX_CONNECTIONS`` connections
served at once (more are closed at accept), ``IDLE_TIMEOUT_SECONDS`` to send each request on a
connection (slow senders are dropped), request bodies of at most ``MAX_BODY_BYTES`` with a
``Content-Length`` (chunked bodies are refused with 411), paths of at most ``MAX_PATH_CHARS``.
A refusal sent before the body was read is followed by a bounded lingering close (``LINGER_BYTES``
within ``LINGER_SECONDS``, as nginx does): closing with unread data sends a reset, and the client,
still writing its body, would see a broken pipe instead of the 413 or 401.
Credentials, when configured, are required on every route and compared in constant time.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .api import RegistryApi, RegistryError
from .store import Limits, Store

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
IDLE_TIMEOUT_SECONDS = 30.0
MAX_BODY_BYTES = 1 << 20  # a schema is a few KB; Confluent's own limit is the Kafka message (1 MB)
MAX_PATH_CHARS = 4096
LINGER_BYTES = 4 * MAX_BODY_BYTES
LINGER_SECONDS = 5.0
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "analytics-schema-registry"
    sys_version = ""
    timeout = IDLE_TIMEOUT_SECONDS
    server: RegistryHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _send(self, status: int, payload: Any, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, unknown method, long headers) as JSON too."""
        self.close_connection = True
        self._send(code, {"error_code": code, "message": message or self.responses.get(code, ("",))[0]}, close=True)

    def _error(self, error: RegistryError, *, close: bool = False, headers: dict[str, str] | None = None) -> None:
        self._send(error.status, error.body(), close=close, headers=headers)

    def _refuse_unread(self, error: RegistryError, *, headers: dict[str, str] | None = None) -> None:
        """Answer before reading the body, then drop what the client still sends (bounded) and close."""
        self._error(error, close=True, headers=headers)
        self.wfile.flush()
        deadline = time.monotonic() + LINGER_SECONDS
        remaining = LINGER_BYTES
        try:
            while remaining > 0 and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(remaining, 1 << 16))
                if not chunk:
                    return
                remaining -= len(chunk)
        except OSError:  # timed out or reset: the close below is all that is left to do
            return

    def _authorized(self) -> bool:
        expected = self.server.user_info
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, expected)

    def _body(self) -> bytes | None:
        """The request body, or None after answering a refusal (the connection is then closed)."""
        if self.headers.get("Transfer-Encoding"):
            self._refuse_unread(RegistryError(411, 411, "A Content-Length is required"))
            return None
        raw = self.headers.get("Content-Length", "0")
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            self._error(RegistryError(400, 400, "Invalid Content-Length"), close=True)
            return None
        if length > MAX_BODY_BYTES:
            self._refuse_unread(RegistryError(413, 413, f"Request body larger than {MAX_BODY_BYTES} bytes"))
            return None
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        if len(self.path) > MAX_PATH_CHARS:
            self._error(RegistryError(414, 414, "Request path too long"), close=True)
            return
        if not self._authorized():
            # The body is not read: close, so that it is not taken for the next request.
            self._refuse_unread(
                RegistryError(401, 401, "Unauthorized"),
                headers={"WWW-Authenticate": 'Basic realm="schema-registry"'},
            )
            return
        body = self._body()
        if body is None:
            return
        parts = urlsplit(self.path)
        # Split before unquoting: a subject may hold '/', sent as %2F by the clients.
        segments = [unquote(s) for s in parts.path.split("/") if s]
        query = dict(parse_qsl(parts.query))
        try:
            status, payload = self.server.api.handle(method, segments, query, body)
        except RegistryError as error:
            self._error(error)
            return
        except Exception:
            logger.exception("schema registry request failed: %s %s", method, parts.path)
            self._error(RegistryError(500, 50001, "Error in the backend data store"))
            return
        self._send(status, payload)


class RegistryHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        store: Store,
        user_info: str | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.api = RegistryApi(store)
        self.user_info = user_info.encode() if user_info else None
        self.tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock.settimeout(IDLE_TIMEOUT_SECONDS)  # a client that never finishes its TLS handshake
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self._slots.acquire(blocking=False)  # beyond MAX_CONNECTIONS: closed unanswered

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def server_build(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8081,
    user_info: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    limits: Limits | None = None,
) -> RegistryHTTPServer:
    """The server, bound and ready to ``serve_forever``; refuses an unauthenticated non-loopback bind."""
    if user_info is not None and ":" not in user_info:
        raise ValueError("the registry's user info must be user:password")
    if not is_loopback(host) and not user_info:
        raise ValueError(f"refusing to serve {host} without authentication: set SCHEMA_REGISTRY_SERVER_USER_INFO")
    tls = None
    if tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(tls_cert, tls_key)
    store = Store(data_dir, limits=limits)
    try:
        return RegistryHTTPServer((host, port), store=store, user_info=user_info, tls=tls)
    except BaseException:
        store.close()
        raise
