"""Wire codec of the ClickHouse native TCP protocol (server side).

Only the subset that clickhouse-driver and clickhouse-client need is implemented. The server
advertises revision 54453 (the last one before custom/sparse column serialization, 54454), so a
newer client negotiates down to it: settings arrive as strings, blocks carry an 8-byte BlockInfo
and then are byte-identical to the ``Native`` format chdb reads and writes. That is what lets the
server pass result blocks through without decoding them.

Field order follows ClickHouse ``src/Server/TCPHandler.cpp`` and ``src/Core/Protocol.h``, and
clickhouse-driver's ``connection.py`` / ``clientinfo.py`` (the client side of the same packets).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

SERVER_REVISION = 54453
SERVER_NAME = "ClickHouse"

# Revisions at which fields were added (ClickHouse src/Core/ProtocolDefines.h).
REV_WITH_SERVER_TIMEZONE = 54058
REV_WITH_QUOTA_KEY_IN_CLIENT_INFO = 54060
REV_WITH_SERVER_DISPLAY_NAME = 54372
REV_WITH_VERSION_PATCH = 54401
REV_WITH_CLIENT_WRITE_INFO = 54420
REV_WITH_SETTINGS_AS_STRINGS = 54429
REV_WITH_INTERSERVER_SECRET = 54441
REV_WITH_OPENTELEMETRY = 54442
REV_WITH_DISTRIBUTED_DEPTH = 54448
REV_WITH_INITIAL_QUERY_START_TIME = 54449
REV_WITH_PARALLEL_REPLICAS = 54453
REV_WITH_TEMPORARY_TABLES = 50264
REV_WITH_TOTAL_ROWS_IN_PROGRESS = 51554
REV_WITH_BLOCK_INFO = 51903
REV_WITH_CLIENT_INFO = 54032


class ClientPacket:
    HELLO = 0
    QUERY = 1
    DATA = 2
    CANCEL = 3
    PING = 4
    TABLES_STATUS_REQUEST = 5


class ServerPacket:
    HELLO = 0
    DATA = 1
    EXCEPTION = 2
    PROGRESS = 3
    PONG = 4
    END_OF_STREAM = 5
    PROFILE_INFO = 6
    TOTALS = 7
    EXTREMES = 8
    TABLE_COLUMNS = 11


class QueryStage:
    COMPLETE = 2


# ClickHouse error codes used by the server itself (src/Common/ErrorCodes.cpp).
class ErrorCode:
    NOT_IMPLEMENTED = 48
    LOGICAL_ERROR = 49
    UNKNOWN_DATABASE = 81
    UNKNOWN_PACKET_FROM_CLIENT = 101
    UNEXPECTED_PACKET_FROM_CLIENT = 102
    UNKNOWN_SETTING = 115
    TOO_LARGE_SIZE_COMPRESSED = 39
    TOO_LARGE_STRING_SIZE = 131
    QUERY_IS_TOO_LARGE = 229
    CORRUPTED_DATA = 246
    SOCKET_TIMEOUT = 209
    TOO_MANY_BYTES = 307
    QUERY_WAS_CANCELLED = 394
    AUTHENTICATION_FAILED = 516
    TCP_CONNECTION_LIMIT_REACHED = 749
    TOO_MANY_SETTINGS = 117  # INCORRECT_DATA: ClickHouse has no code for it


ERROR_NAMES = {
    ErrorCode.NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    ErrorCode.LOGICAL_ERROR: "LOGICAL_ERROR",
    ErrorCode.UNKNOWN_DATABASE: "UNKNOWN_DATABASE",
    ErrorCode.UNKNOWN_PACKET_FROM_CLIENT: "UNKNOWN_PACKET_FROM_CLIENT",
    ErrorCode.UNEXPECTED_PACKET_FROM_CLIENT: "UNEXPECTED_PACKET_FROM_CLIENT",
    ErrorCode.UNKNOWN_SETTING: "UNKNOWN_SETTING",
    ErrorCode.TOO_LARGE_SIZE_COMPRESSED: "TOO_LARGE_SIZE_COMPRESSED",
    ErrorCode.TOO_LARGE_STRING_SIZE: "TOO_LARGE_STRING_SIZE",
    ErrorCode.CORRUPTED_DATA: "CORRUPTED_DATA",
    ErrorCode.QUERY_IS_TOO_LARGE: "QUERY_IS_TOO_LARGE",
    ErrorCode.SOCKET_TIMEOUT: "SOCKET_TIMEOUT",
    ErrorCode.TOO_MANY_BYTES: "TOO_MANY_BYTES",
    ErrorCode.TCP_CONNECTION_LIMIT_REACHED: "TCP_CONNECTION_LIMIT_REACHED",
    ErrorCode.TOO_MANY_SETTINGS: "INCORRECT_DATA",
    ErrorCode.QUERY_WAS_CANCELLED: "QUERY_WAS_CANCELLED",
    ErrorCode.AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
}


class ServerError(Exception):
    """An error reported to the client as an Exception packet.

    ``message`` is the ClickHouse display text, e.g.
    ``"DB::Exception: Table default.t does not exist. (UNKNOWN_TABLE)"``, which is what a real
    server puts in the packet and what clickhouse-driver shows after ``Code: N.``.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Code: {code}. {message}")
        self.code = code
        self.message = message

    @classmethod
    def make(cls, code: int, text: str) -> Self:
        """Build the error from a bare text, the way ClickHouse formats its own messages."""
        return cls(code, f"DB::Exception: {text}. ({ERROR_NAMES.get(code, 'UNKNOWN')})")


class LimitExceeded(ServerError):
    """A length or count from the client is over its bound.

    The field's bytes are left unread, so the stream position is lost: the error is reported and
    then the connection is closed. Raised before anything of the claimed size is allocated.
    """


class ProtocolError(Exception):
    """The peer broke the protocol; the connection cannot continue."""


# Any string field of a packet other than the query text (names, ids, settings, client info):
# real ones are a few bytes to a few KiB.
MAX_STRING_BYTES = 1 << 20
# Settings of one Query packet: clickhouse-driver sends only those the caller set; ClickHouse has
# about 1,500 in all. Their total size is bounded too, so a packet cannot make the server hold
# MAX_SETTINGS strings of MAX_STRING_BYTES each.
MAX_SETTINGS = 4096
MAX_SETTINGS_BYTES = 4 << 20


# --- encoding -------------------------------------------------------------------------------

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def encode_varint(value: int) -> bytes:
    """LEB128, as ClickHouse's writeVarUInt."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_bytes(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def encode_str(value: str) -> bytes:
    return encode_bytes(value.encode("utf-8"))


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


# BlockInfo with is_overflows=0 and bucket_num=-1 (the only values a plain query produces).
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


def server_hello(*, revision: int, timezone: str, display_name: str, version: tuple[int, int, int]) -> bytes:
    major, minor, patch = version
    out = bytearray(encode_varint(ServerPacket.HELLO))
    out += encode_str(SERVER_NAME) + encode_varint(major) + encode_varint(minor) + encode_varint(SERVER_REVISION)
    if revision >= REV_WITH_SERVER_TIMEZONE:
        out += encode_str(timezone)
    if revision >= REV_WITH_SERVER_DISPLAY_NAME:
        out += encode_str(display_name)
    if revision >= REV_WITH_VERSION_PATCH:
        out += encode_varint(patch)
    return bytes(out)


def exception_packet(error: ServerError, stack_trace: str = "") -> bytes:
    return (
        encode_varint(ServerPacket.EXCEPTION)
        + _I32.pack(error.code)
        + encode_str("DB::Exception")
        + encode_str(error.message)
        + encode_str(stack_trace)
        + b"\x00"
    )


@dataclass(slots=True)
class Progress:
    rows: int = 0
    nbytes: int = 0
    total_rows: int = 0
    written_rows: int = 0
    written_bytes: int = 0

    def encode(self, revision: int) -> bytes:
        out = encode_varint(ServerPacket.PROGRESS) + encode_varint(self.rows) + encode_varint(self.nbytes)
        if revision >= REV_WITH_TOTAL_ROWS_IN_PROGRESS:
            out += encode_varint(self.total_rows)
        if revision >= REV_WITH_CLIENT_WRITE_INFO:
            out += encode_varint(self.written_rows) + encode_varint(self.written_bytes)
        return out


def profile_info_packet(*, rows: int, blocks: int, nbytes: int) -> bytes:
    return (
        encode_varint(ServerPacket.PROFILE_INFO)
        + encode_varint(rows)
        + encode_varint(blocks)
        + encode_varint(nbytes)
        + b"\x00"  # applied_limit
        + encode_varint(rows)  # rows_before_limit
        + b"\x00"  # calculated_rows_before_limit
    )


PONG = encode_varint(ServerPacket.PONG)
END_OF_STREAM = encode_varint(ServerPacket.END_OF_STREAM)


# --- decoding -------------------------------------------------------------------------------

Source = Callable[[int], bytes]


def _no_more(_: int) -> bytes:
    return b""


class ByteReader:
    """Buffered reader over a pull source (a socket, a decompressor, or fixed bytes).

    The Native block parser walks column data directly in ``buf`` for speed, so the buffer and
    position are public. ``begin_capture``/``end_capture`` keep the bytes of one block so the
    block can be forwarded to chdb unchanged.

    ``limit`` bounds the bytes one read may need held at once (a captured block included), and
    ``max_string`` the length of a string field; both are checked before anything is pulled, so
    a claimed length never becomes an allocation. Readers over the client's socket set them;
    readers over bytes already in memory (chdb's output) need not.
    """

    __slots__ = ("_mark", "_source", "buf", "limit", "max_string", "pos")

    def __init__(
        self,
        source: Source = _no_more,
        initial: bytes = b"",
        *,
        limit: int | None = None,
        max_string: int | None = None,
    ) -> None:
        self.buf = bytearray(initial)
        self.pos = 0
        self._source = source
        self._mark = -1
        self.limit = limit
        self.max_string = max_string

    def available(self) -> int:
        return len(self.buf) - self.pos

    def ensure(self, n: int) -> None:
        """Make at least ``n`` unread bytes available, pulling from the source."""
        if len(self.buf) - self.pos >= n:
            return
        if self.limit is not None:
            held = self.pos - (self.pos if self._mark < 0 else self._mark) + n
            if held > self.limit:
                raise LimitExceeded.make(
                    ErrorCode.TOO_MANY_BYTES, f"A packet needs {held} bytes, over the server's limit of {self.limit}"
                )
        while len(self.buf) - self.pos < n:
            self._compact()
            chunk = self._source(n - (len(self.buf) - self.pos))
            if not chunk:
                raise EOFError("unexpected end of stream")
            self.buf += chunk

    def _compact(self) -> None:
        keep = self.pos if self._mark < 0 else self._mark
        if keep and (keep >= len(self.buf) or keep > 1 << 20):
            del self.buf[:keep]
            self.pos -= keep
            if self._mark >= 0:
                self._mark -= keep

    def begin_capture(self) -> None:
        self._mark = self.pos

    def end_capture(self) -> bytes:
        data = bytes(self.buf[self._mark : self.pos])
        self._mark = -1
        return data

    def read(self, n: int) -> bytes:
        self.ensure(n)
        start = self.pos
        self.pos += n
        return bytes(self.buf[start : self.pos])

    def skip(self, n: int) -> None:
        self.ensure(n)
        self.pos += n

    def read_u8(self) -> int:
        self.ensure(1)
        self.pos += 1
        return self.buf[self.pos - 1]

    def read_i32(self) -> int:
        self.ensure(4)
        self.pos += 4
        return int(_I32.unpack_from(self.buf, self.pos - 4)[0])

    def read_u32(self) -> int:
        self.ensure(4)
        self.pos += 4
        return int(_U32.unpack_from(self.buf, self.pos - 4)[0])

    def read_u64(self) -> int:
        self.ensure(8)
        self.pos += 8
        return int(_U64.unpack_from(self.buf, self.pos - 8)[0])

    def read_varint(self) -> int:
        shift = 0
        result = 0
        for _ in range(10):
            byte = self.read_u8()
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result
            shift += 7
        raise ProtocolError("varint is too long")

    def read_bytes(self, limit: int | None = None) -> bytes:
        """A length-prefixed string; ``limit`` (default ``max_string``) bounds the claimed length."""
        n = self.read_varint()
        bound = self.max_string if limit is None else limit
        if bound is not None and n > bound:
            code = ErrorCode.QUERY_IS_TOO_LARGE if limit is not None else ErrorCode.TOO_LARGE_STRING_SIZE
            raise LimitExceeded.make(code, f"A string of {n} bytes is over the limit of {bound}")
        return self.read(n)

    def read_str(self, limit: int | None = None) -> str:
        return self.read_bytes(limit).decode("utf-8", errors="replace")


@dataclass(slots=True)
class ClientHello:
    client_name: str
    version_major: int
    version_minor: int
    revision: int
    database: str
    user: str
    password: str


def read_client_hello(reader: ByteReader) -> ClientHello:
    """Read a Hello packet; the packet type byte must already be consumed."""
    return ClientHello(
        client_name=reader.read_str(),
        version_major=reader.read_varint(),
        version_minor=reader.read_varint(),
        revision=reader.read_varint(),
        database=reader.read_str(),
        user=reader.read_str(),
        password=reader.read_str(),
    )


@dataclass(slots=True)
class Setting:
    value: str
    important: bool


@dataclass(slots=True)
class QueryPacket:
    query_id: str
    settings: dict[str, Setting] = field(default_factory=dict)
    stage: int = QueryStage.COMPLETE
    compression: bool = False
    query: str = ""


def _skip_client_info(reader: ByteReader, revision: int) -> None:
    if not reader.read_u8():  # query_kind NO_QUERY: nothing follows
        return
    reader.read_bytes()  # initial_user
    reader.read_bytes()  # initial_query_id
    reader.read_bytes()  # initial_address
    if revision >= REV_WITH_INITIAL_QUERY_START_TIME:
        reader.skip(8)
    reader.read_u8()  # interface
    reader.read_bytes()  # os_user
    reader.read_bytes()  # client_hostname
    reader.read_bytes()  # client_name
    reader.read_varint()
    reader.read_varint()
    reader.read_varint()
    if revision >= REV_WITH_QUOTA_KEY_IN_CLIENT_INFO:
        reader.read_bytes()
    if revision >= REV_WITH_DISTRIBUTED_DEPTH:
        reader.read_varint()
    if revision >= REV_WITH_VERSION_PATCH:
        reader.read_varint()
    if revision >= REV_WITH_OPENTELEMETRY and reader.read_u8():
        reader.skip(16 + 8)  # trace_id, span_id
        reader.read_bytes()  # tracestate
        reader.read_u8()  # trace_flags
    if revision >= REV_WITH_PARALLEL_REPLICAS:
        reader.read_varint()
        reader.read_varint()
        reader.read_varint()


def read_query(reader: ByteReader, revision: int, *, max_query: int) -> QueryPacket:
    """Read a Query packet; the packet type byte must already be consumed.

    ``max_query`` bounds the query text; the other fields are bounded by the reader's
    ``max_string`` and by MAX_SETTINGS / MAX_SETTINGS_BYTES.
    """
    if revision < REV_WITH_SETTINGS_AS_STRINGS:
        raise ServerError.make(ErrorCode.NOT_IMPLEMENTED, f"Client revision {revision} is too old")
    packet = QueryPacket(query_id=reader.read_str())
    if revision >= REV_WITH_CLIENT_INFO:
        _skip_client_info(reader, revision)
    settings_bytes = 0
    while name := reader.read_str():
        flags = reader.read_varint()
        value = reader.read_str()
        settings_bytes += len(name) + len(value)
        packet.settings[name] = Setting(value=value, important=bool(flags & 1))
        if len(packet.settings) > MAX_SETTINGS or settings_bytes > MAX_SETTINGS_BYTES:
            raise LimitExceeded.make(
                ErrorCode.TOO_MANY_SETTINGS,
                f"Too many settings in one query: over {MAX_SETTINGS} or {MAX_SETTINGS_BYTES} bytes",
            )
    if revision >= REV_WITH_INTERSERVER_SECRET:
        reader.read_bytes()
    packet.stage = reader.read_varint()
    packet.compression = bool(reader.read_varint())
    packet.query = reader.read_str(max_query)
    return packet
