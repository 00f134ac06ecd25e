"""One client connection: handshake, then queries one after another, as ClickHouse's TCPHandler.

Packet order per query, as clickhouse-driver expects it:

* SELECT: header block (0 rows, names and types), data blocks, Progress, ProfileInfo,
  EndOfStream. Blocks are pulled from chdb one at a time and written to the socket before the
  next is pulled, so a slow reader pauses the query instead of growing the server's memory.
* INSERT waiting for data: sample block of the target columns; then the client's blocks, fed to
  a chdb streaming insert as they come, until an empty block; then Progress, EndOfStream.
* Any other statement: its result blocks if any, then EndOfStream.
* Errors: one Exception packet with chdb's ClickHouse code and text; the session stays usable.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import select
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .compression import METHOD_LZ4, FrameSource, compress_frames
from .engine import EngineConnection, Stream, quote_identifier
from .limits import DEFAULT_LIMITS, ServerLimits
from .native import (
    BlockShape,
    UnsupportedType,
    encode_header,
    header_of,
    retype_block,
    skip_block,
    skip_block_info,
    split_blocks,
)
from .protocol import (
    BLOCK_INFO,
    END_OF_STREAM,
    MAX_STRING_BYTES,
    PONG,
    SERVER_REVISION,
    ByteReader,
    ClientPacket,
    ErrorCode,
    LimitExceeded,
    Progress,
    ProtocolError,
    QueryPacket,
    ServerError,
    ServerPacket,
    encode_str,
    encode_varint,
    exception_packet,
    profile_info_packet,
    read_client_hello,
    read_query,
    server_hello,
)
from .sql import InlineInsert, InsertTarget, StatementGate, first_keyword, inline_insert, insert_target

logger = logging.getLogger(__name__)

_DATA_HEADER = encode_varint(ServerPacket.DATA) + encode_str("")  # packet type, no temp table
_STREAMED = {"SELECT", "WITH", "("}
_MAX_RECV = 4 << 20
# How long a refused client may go on sending (its rest of a packet) before the socket is closed.
_LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class SessionConfig:
    data_dir: str
    timezone: str
    version: tuple[int, int, int]
    display_name: str
    spool_dir: Path
    gate: StatementGate  # what clients may not run (see sql.StatementGate); internal queries skip it
    user: str | None = None
    password: str | None = None
    engine_config: str | None = None  # chdb config file (the engine user's grants), see engine.py
    limits: ServerLimits = DEFAULT_LIMITS
    tls: ssl.SSLContext | None = None  # wrap each connection (the handshake runs in its thread)


class _Cancelled(Exception):
    """The client sent Cancel."""


class _Timeout(Exception):
    """The client was silent for longer than the timeout of ``phase`` (see :mod:`.limits`)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


class _Fatal(Exception):
    """Report ``error`` and close: the stream position is lost (e.g. an unknown column layout)."""

    def __init__(self, error: ServerError) -> None:
        super().__init__(error.message)
        self.error = error


class Session:
    """Serves one accepted socket until the client leaves or the server stops."""

    def __init__(self, sock: socket.socket, peer: str, config: SessionConfig) -> None:
        self.sock = sock
        self.peer = peer
        self.config = config
        limits = config.limits
        self.reader = ByteReader(self._recv, limit=limits.max_packet_bytes, max_string=MAX_STRING_BYTES)
        # Timeouts: the next recv waits ``_wait`` s (the phase's timeout for a packet's first
        # byte, then packet_timeout for the rest), never past ``_deadline`` (the handshake's).
        self._phase = "handshake"
        self._wait = limits.handshake_timeout
        self._deadline: float | None = None
        self._timeout: float | None = None
        self.revision = SERVER_REVISION
        self.engine: EngineConnection | None = None
        self._compression: int | None = None  # method byte for replies, None = uncompressed
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False

    # --- lifecycle (called from the server thread too) ------------------------------------

    def close_when_idle(self) -> None:
        """Ask the session to end: now if it waits for a packet, else after its current query."""
        with self._lock:
            self._closing = True
            if not self._busy:
                self._shutdown_socket()

    def abort(self) -> None:
        """End the session now, cancelling its query (its next socket write fails)."""
        with self._lock:
            self._closing = True
            self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _set_busy(self, busy: bool) -> bool:
        """Mark the session busy/idle; return False when it should stop instead."""
        with self._lock:
            self._busy = busy
            return not self._closing

    # --- I/O --------------------------------------------------------------------------------

    def _settimeout(self, wait: float) -> None:
        if self._deadline is not None:
            wait = min(wait, self._deadline - time.monotonic())
            if wait <= 0:
                raise _Timeout("handshake")
        if wait != self._timeout:
            self.sock.settimeout(wait)
            self._timeout = wait

    def _recv(self, n: int) -> bytes:
        self._settimeout(self._wait)
        try:
            data = self.sock.recv(min(max(n, 65536), _MAX_RECV))
        except ConnectionResetError:
            return b""
        except TimeoutError:
            raise _Timeout(self._phase) from None
        self._phase, self._wait = "packet", self.config.limits.packet_timeout
        return data

    def _read_packet_type(self, phase: str, wait: float) -> int:
        """The type of the next packet, waiting ``wait`` s for it; its rest gets packet_timeout."""
        self._phase, self._wait = phase, wait
        try:
            return self.reader.read_varint()
        finally:
            self._phase, self._wait = "packet", self.config.limits.packet_timeout

    def _send(self, data: bytes) -> None:
        self._settimeout(self.config.limits.send_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _Timeout("send") from None

    def _send_block(self, block: bytes, trailer: bytes = b"") -> None:
        """Send one Data packet (compressed if the query asked for it), then ``trailer`` packets."""
        payload = BLOCK_INFO + block
        if self._compression is not None:
            payload = compress_frames(payload, self._compression)
        self._send(_DATA_HEADER + payload + trailer)

    def _send_error(self, error: ServerError) -> None:
        self._send(exception_packet(error))

    # --- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._deadline = time.monotonic() + self.config.limits.handshake_timeout
            if self._start_tls() and self._handshake():
                self._deadline = None
                self._serve()
        except (EOFError, ConnectionError, BrokenPipeError):
            logger.debug("client %s disconnected", self.peer)
        except _Timeout as timeout:
            # Handshake timeouts are what a flood of silent connections produces: not one line each.
            level = logging.DEBUG if timeout.phase == "handshake" else logging.INFO
            logger.log(level, "closing connection from %s: %s timeout", self.peer, timeout.phase)
            if timeout.phase != "send" and self._busy:  # a query was waiting for the client's data
                timed_out = ServerError.make(
                    ErrorCode.SOCKET_TIMEOUT, f"Timeout exceeded while reading from socket ({self.peer})"
                )
                self._report_quietly(timed_out)
        except LimitExceeded as error:
            logger.warning("closing connection from %s: %s", self.peer, error.message)
            self._report_quietly(error)
            self._linger()
        except ProtocolError as exc:
            logger.warning("protocol error from %s: %s", self.peer, exc)
        except OSError as exc:
            logger.debug("socket error with %s: %s", self.peer, exc)
        finally:
            if self.engine is not None:
                self.engine.close()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _linger(self) -> None:
        """Drop what the client is still sending, for a moment, before the socket is closed.

        Closing with unread bytes in the receive buffer sends a reset, and the client's kernel
        then discards the exception packet before the client reads it: the sink would see a
        connection reset (retryable, forever) instead of the error that says its chunk is too
        big (deterministic: split it). Bounded in time, so a client that keeps sending cannot
        hold the thread.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + _LINGER_SECONDS
            while (left := end - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(_MAX_RECV):
                    break

    def _report_quietly(self, error: ServerError) -> None:
        """Tell the client why it is being dropped, if it still listens (a short wait, no raise)."""
        with contextlib.suppress(OSError, _Timeout):
            self._deadline = time.monotonic() + 2.0
            self._send_error(error)

    def _start_tls(self) -> bool:
        """With TLS configured, wrap the socket and shake hands within the handshake deadline."""
        if self.config.tls is None:
            return True
        with self._lock:  # abort() from the server thread shuts down whichever socket is current
            if self._closing:
                return False
            tls_sock = self.config.tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            self.sock = tls_sock
            self._timeout = None
        self._settimeout(self.config.limits.handshake_timeout)
        try:
            tls_sock.do_handshake()
        except TimeoutError:
            raise _Timeout("handshake") from None
        except ssl.SSLError as exc:
            logger.info("TLS handshake with %s failed: %s", self.peer, exc)
            return False
        return True

    def _handshake(self) -> bool:
        packet_type = self.reader.read_varint()
        if packet_type != ClientPacket.HELLO:
            raise ProtocolError(f"expected Hello, got packet {packet_type}")
        hello = read_client_hello(self.reader)
        self.revision = min(hello.revision, SERVER_REVISION)
        if not self._authenticated(hello.user, hello.password):
            logger.info("authentication failed for user %r from %s", hello.user, self.peer)
            self._send_error(
                ServerError.make(
                    ErrorCode.AUTHENTICATION_FAILED,
                    f"{hello.user}: Authentication failed: password is incorrect, or there is no user with such name",
                )
            )
            return False
        self.engine = EngineConnection(self.config.data_dir, self.config.engine_config)
        if hello.database:
            try:
                self.engine.execute(f"USE {quote_identifier(hello.database)}")
                self.engine.database = hello.database
            except ServerError as error:
                self._send_error(error)
                return False
        self._send(
            server_hello(
                revision=self.revision,
                timezone=self.config.timezone,
                display_name=self.config.display_name,
                version=self.config.version,
            )
        )
        logger.debug("client %s connected: %s rev %s", self.peer, hello.client_name, hello.revision)
        return True

    def _authenticated(self, user: str, password: str) -> bool:
        expected_user = self.config.user or "default"
        if self.config.password is None and self.config.user is None:
            return True
        return hmac.compare_digest(user.encode(), expected_user.encode()) & hmac.compare_digest(
            password.encode(), (self.config.password or "").encode()
        )

    def _serve(self) -> None:
        while self._set_busy(False):
            packet_type = self._read_packet_type("idle", self.config.limits.idle_timeout)
            if not self._set_busy(True):
                return
            if packet_type == ClientPacket.PING:
                self._send(PONG)
            elif packet_type == ClientPacket.QUERY:
                if not self._query():
                    return
            elif packet_type == ClientPacket.CANCEL:
                continue  # a Cancel that crossed the end of its query
            else:
                raise ProtocolError(f"unexpected packet {packet_type} between queries")

    # --- queries ----------------------------------------------------------------------------

    def _query(self) -> bool:
        """Run one query; return False when the connection must be closed."""
        assert self.engine is not None
        packet = read_query(self.reader, self.revision, max_query=self.config.limits.max_packet_bytes)
        query_id = packet.query_id or str(uuid.uuid4())
        started = time.monotonic()
        self._compression = None
        blocks = self.reader
        if packet.compression:
            frames = FrameSource(self.reader)
            blocks = ByteReader(frames, limit=self.reader.limit, max_string=self.reader.max_string)
            self._compression = METHOD_LZ4
        try:
            has_external = self._drain_data(blocks)
            if packet.compression:
                self._compression = frames.method
            if has_external:
                raise ServerError.make(ErrorCode.NOT_IMPLEMENTED, "External tables are not supported")
            self._dispatch(packet, blocks)
        except _Cancelled:
            self._send(END_OF_STREAM)
        except LimitExceeded as error:  # the rest of the packet is unread: the stream is lost
            logger.warning("query %s refused, closing connection: %s", query_id, error.message)
            self._send_error(error)
            self._linger()
            return False
        except _Fatal as fatal:
            logger.warning("query %s failed, closing connection: %s", query_id, fatal.error.message)
            self._send_error(fatal.error)
            self._linger()
            return False
        except ServerError as error:
            logger.info("query %s failed: Code %s: %s", query_id, error.code, error.message)
            self._send_error(error)
        except (EOFError, OSError, ProtocolError, _Timeout):
            raise
        except Exception as exc:
            logger.exception("query %s: internal error", query_id)
            self._send_error(ServerError.make(ErrorCode.LOGICAL_ERROR, f"Internal server error: {exc!r}"))
            return False
        logger.debug("query %s done in %.3fs: %.200s", query_id, time.monotonic() - started, packet.query)
        return True

    def _dispatch(self, packet: QueryPacket, blocks: ByteReader) -> None:
        assert self.engine is not None
        sql = packet.query
        refusal = self.config.gate.refusal(sql) or self.config.gate.setting_refusal(packet.settings)
        if refusal is not None:
            raise refusal
        keyword = first_keyword(sql)
        if keyword == "SET":
            self.engine.reset_settings()  # the client changes session settings itself
        else:
            self.engine.apply_settings(packet.settings)
        target = insert_target(sql) if keyword == "INSERT" else None
        inline = inline_insert(sql) if keyword == "INSERT" and target is None else None
        if target is not None:
            self._insert(target, blocks)
        elif inline is not None:
            self._insert_inline(inline, sql)
        elif keyword in _STREAMED:
            stream = self.engine.stream(sql)
            if stream is None:
                self._statement(sql)
            else:
                self._select(sql, stream)
        else:
            self._statement(sql)
            if keyword == "USE":
                self.engine.refresh_database()

    def _select(self, sql: str, stream: Stream) -> None:
        assert self.engine is not None
        chunks = stream.chunks()
        try:
            first = next(chunks, None)
            if first is None:
                columns = self.engine.describe_query(sql)
                if columns is not None:
                    self._send_block(encode_header(columns))
                self._finish_select(stream, 0, Progress())
                return
            retype: dict[int, str] = {}
            try:
                columns = header_of(first).columns
                retype = self._declared_datetime_types(sql, columns)
                for index, type_name in retype.items():
                    columns[index] = (columns[index][0], type_name)
                self._send_block(encode_header(columns))
            except UnsupportedType:
                pass  # rows still reach the client; only with_column_types misses the names
            reported = Progress()
            self._send_block(retype_block(first, retype) if retype else first, self._progress(stream, reported))
            count = 1
            for chunk in chunks:
                if self._cancel_requested():
                    stream.cancel()
                    break
                self._send_block(retype_block(chunk, retype) if retype else chunk, self._progress(stream, reported))
                count += 1
            self._finish_select(stream, count, reported)
        except BaseException:
            stream.cancel()
            raise

    def _declared_datetime_types(self, sql: str, columns: list[tuple[str, str]]) -> dict[int, str]:
        """Time zones chdb's Native output dropped from ``DateTime('tz')`` columns (see retype_block)."""
        assert self.engine is not None
        if not any(type_name == "DateTime" for _, type_name in columns):
            return {}
        declared = self.engine.describe_query(sql, while_streaming=True)
        if declared is None or len(declared) != len(columns):
            return {}
        return {
            index: declared[index][1]
            for index, (_, type_name) in enumerate(columns)
            if type_name == "DateTime" and declared[index][1].startswith("DateTime(")
        }

    def _progress(self, stream: Stream, reported: Progress) -> bytes:
        """A Progress packet with what chdb read since the last one (clients add them up)."""
        delta = Progress(rows=stream.read_rows - reported.rows, nbytes=stream.read_bytes - reported.nbytes)
        reported.rows, reported.nbytes = stream.read_rows, stream.read_bytes
        return delta.encode(self.revision) if delta.rows or delta.nbytes else b""

    def _finish_select(self, stream: Stream, blocks: int, reported: Progress) -> None:
        self._send(
            self._progress(stream, reported)
            + profile_info_packet(rows=stream.rows, blocks=blocks, nbytes=stream.bytes)
            + END_OF_STREAM
        )

    def _cancel_requested(self) -> bool:
        """Between blocks, look for a Cancel (or a hang-up) without blocking."""
        if not self.reader.available():
            # TLS may hold decrypted bytes that select() cannot see.
            pending = self.sock.pending() if isinstance(self.sock, ssl.SSLSocket) else 0
            readable, _, _ = select.select([self.sock], [], [], 0) if not pending else ([self.sock], [], [])
            if not readable:
                return False
        packet_type = self.reader.read_varint()
        if packet_type == ClientPacket.CANCEL:
            logger.debug("query cancelled by %s", self.peer)
            return True
        raise ProtocolError(f"unexpected packet {packet_type} during a query")

    def _statement(self, sql: str) -> None:
        assert self.engine is not None
        data = self.engine.execute(sql)
        rows = 0
        if data:
            try:
                parts: list[tuple[BlockShape | None, bytes]] = list(split_blocks(data))
            except UnsupportedType:
                parts = [(None, data)]  # chdb returns a small result as a single block
            first_shape = parts[0][0]
            if first_shape is not None:
                self._send_block(encode_header(first_shape.columns))
            for shape, block in parts:
                if shape is None or shape.rows:
                    self._send_block(block)
                    rows += shape.rows if shape else 0
        self._send(Progress(rows=rows).encode(self.revision) + END_OF_STREAM)

    def _insert(self, target: InsertTarget, blocks: ByteReader) -> None:
        assert self.engine is not None
        columns = self.engine.insert_columns(target.table, target.columns)
        insert = self.engine.begin_insert(target.head, target.settings, self.config.spool_dir)
        try:
            self._send_block(encode_header(columns))
            while (block := self._read_block(blocks)) is not None:
                shape, data = block
                if shape.rows:
                    insert.append(data)
            rows, nbytes = insert.finish()
        except _Cancelled:
            insert.cancel()
            self._send(END_OF_STREAM)
            return
        except BaseException:
            insert.cancel()
            raise
        self._send(Progress(written_rows=rows, written_bytes=nbytes).encode(self.revision) + END_OF_STREAM)

    def _insert_inline(self, inline: InlineInsert, sql: str) -> None:
        """An INSERT with its data in the query text: spool the data, run it ``FROM INFILE``."""
        assert self.engine is not None
        target = inline.target
        insert = self.engine.begin_insert(target.head, target.settings, self.config.spool_dir, inline.format)
        try:
            insert.append(sql[inline.data_start :].encode())
            rows, nbytes = insert.finish()
        except BaseException:
            insert.cancel()
            raise
        self._send(Progress(written_rows=rows, written_bytes=nbytes).encode(self.revision) + END_OF_STREAM)

    def _read_block(self, blocks: ByteReader) -> tuple[BlockShape, bytes] | None:
        """Read one Data packet from the client; None for the empty block that ends data."""
        packet_type = self._read_packet_type("receive", self.config.limits.receive_timeout)
        if packet_type == ClientPacket.CANCEL:
            raise _Cancelled
        if packet_type != ClientPacket.DATA:
            raise ProtocolError(f"expected Data, got packet {packet_type}")
        self.reader.read_bytes()  # external table name
        skip_block_info(blocks)
        blocks.begin_capture()
        try:
            shape = skip_block(blocks)
        except UnsupportedType as exc:
            raise _Fatal(ServerError.make(ErrorCode.NOT_IMPLEMENTED, f"Inserting type {exc} is not supported")) from exc
        data = blocks.end_capture()
        return None if not shape.columns else (shape, data)

    def _drain_data(self, blocks: ByteReader) -> bool:
        """Read the external-table blocks every query is followed by; True if any had rows."""
        has_rows = False
        while (block := self._read_block(blocks)) is not None:
            has_rows = has_rows or block[0].rows > 0
        return has_rows
