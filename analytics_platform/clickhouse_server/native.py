"""Walking ``Native``-format blocks without decoding them.

The server never converts values: result blocks from chdb and insert blocks from the client are
forwarded byte for byte. It still has to know where a block ends (the TCP stream has no length
prefix for it) and what columns it holds (for the header block clickhouse-driver takes column
names and types from). Both need a walk over each column's serialized data, driven by the type
name. The layout follows ClickHouse's ``ISerialization::serializeBinaryBulkWithMultipleStreams``
with all streams written one after another: every column first writes the "state prefixes" of
its whole type tree (only LowCardinality has one), then its data.

Types without a plain layout here (Variant, Dynamic, JSON, AggregateFunction) raise
:class:`UnsupportedType`; callers fall back to asking chdb (``DESCRIBE``) where they can.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .protocol import ByteReader, ErrorCode, LimitExceeded, ProtocolError, encode_str, encode_varint


class UnsupportedType(Exception):
    """The type's binary layout is not known to this walker."""


_FIXED_SIZES = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "DateTime": 4, "Date32": 4, "IPv4": 4,
    "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}  # fmt: skip
_ALIASES = {"Float": "Float32", "Double": "Float64", "Boolean": "Bool", "INET4": "IPv4", "INET6": "IPv6"}
_GEO = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(LineString)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}


def split_args(text: str) -> list[str]:
    """Split a type's argument list on top-level commas, respecting quotes and parentheses."""
    args, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail:
        args.append(tail)
    return args


def _strip_element_name(arg: str) -> str:
    """``Tuple(a String)`` / ``Nested(a String)`` elements carry a name before the type."""
    if arg[:1] in '`"':
        end = arg.index(arg[0], 1)
        return arg[end + 1 :].strip()
    head, _, rest = arg.partition(" ")
    if rest and "(" not in head:
        return rest.strip()
    return arg


class Column:
    """Skipper for one column type: ``prefix`` reads the state prefix, ``data`` n rows."""

    def prefix(self, r: ByteReader) -> None:
        return None

    def data(self, r: ByteReader, n: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _Fixed(Column):
    size: int

    def data(self, r: ByteReader, n: int) -> None:
        r.skip(self.size * n)


class _String(Column):
    def data(self, r: ByteReader, n: int) -> None:
        # Hot loop of every insert: walk the length varints straight in the buffer.
        while n:
            buf, pos = r.buf, r.pos
            end = len(buf)
            while n and pos < end:
                length = buf[pos]
                nxt = pos + 1
                if length >= 0x80:
                    length &= 0x7F
                    shift = 7
                    while nxt < end and buf[nxt] >= 0x80:
                        length |= (buf[nxt] & 0x7F) << shift
                        shift += 7
                        nxt += 1
                    if nxt >= end:
                        break
                    length |= buf[nxt] << shift
                    nxt += 1
                nxt += length
                if nxt > end:
                    break
                pos = nxt
                n -= 1
            r.pos = pos
            if n:
                r.ensure(end - pos + 1)


@dataclass(frozen=True, slots=True)
class _Nullable(Column):
    inner: Column

    def prefix(self, r: ByteReader) -> None:
        self.inner.prefix(r)

    def data(self, r: ByteReader, n: int) -> None:
        r.skip(n)
        self.inner.data(r, n)


@dataclass(frozen=True, slots=True)
class _Array(Column):
    inner: Column

    def prefix(self, r: ByteReader) -> None:
        self.inner.prefix(r)

    def data(self, r: ByteReader, n: int) -> None:
        if not n:
            return
        r.skip(8 * n - 8)
        total = r.read_u64()  # offsets are cumulative: the last one is the element count
        self.inner.data(r, total)


@dataclass(frozen=True, slots=True)
class _Tuple(Column):
    elements: tuple[Column, ...]

    def prefix(self, r: ByteReader) -> None:
        for element in self.elements:
            element.prefix(r)

    def data(self, r: ByteReader, n: int) -> None:
        for element in self.elements:
            element.data(r, n)


_LC_NEED_GLOBAL_DICTIONARY = 1 << 8
_LC_HAS_ADDITIONAL_KEYS = 1 << 9
_LC_NEED_UPDATE_DICTIONARY = 1 << 10


@dataclass(frozen=True, slots=True)
class _LowCardinality(Column):
    keys: Column  # the dictionary type without Nullable

    def prefix(self, r: ByteReader) -> None:
        r.skip(8)  # keys serialization version

    def data(self, r: ByteReader, n: int) -> None:
        has_global = False
        while n:
            index_type = r.read_u64()
            if index_type & _LC_NEED_GLOBAL_DICTIONARY and (not has_global or index_type & _LC_NEED_UPDATE_DICTIONARY):
                self.keys.data(r, r.read_u64())
                has_global = True
            if index_type & _LC_HAS_ADDITIONAL_KEYS:
                self.keys.data(r, r.read_u64())
            rows = r.read_u64()
            r.skip(rows << (index_type & 0xFF))
            n -= min(rows, n)


@lru_cache(maxsize=1024)
def column_for(type_name: str) -> Column:
    """Build (and cache) the skipper for a ClickHouse type name."""
    type_name = type_name.strip()
    base, _, rest = type_name.partition("(")
    base = _ALIASES.get(base.strip(), base.strip())
    args = split_args(rest[:-1]) if rest else []
    if base in _GEO:
        return column_for(_GEO[base])
    if base in _FIXED_SIZES:
        return _Fixed(_FIXED_SIZES[base])
    if base == "String":
        return _String()
    if base == "FixedString":
        return _Fixed(int(args[0]))
    if base == "Decimal":
        precision = int(args[0])
        return _Fixed(4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
    if base.startswith("Interval"):
        return _Fixed(8)
    if base == "Nullable":
        return _Nullable(column_for(args[0]))
    if base == "Array":
        return _Array(column_for(args[0]))
    if base == "Map":
        return _Array(_Tuple((column_for(args[0]), column_for(args[1]))))
    if base == "Tuple":
        return _Tuple(tuple(column_for(_strip_element_name(arg)) for arg in args))
    if base == "Nested":
        return _Array(_Tuple(tuple(column_for(_strip_element_name(arg)) for arg in args)))
    if base == "LowCardinality":
        inner = args[0]
        if inner.startswith("Nullable("):
            inner = inner[len("Nullable(") : -1]
        return _LowCardinality(column_for(inner))
    if base == "SimpleAggregateFunction":
        return column_for(args[-1])
    raise UnsupportedType(type_name)


@dataclass(frozen=True, slots=True)
class BlockShape:
    """What a block holds; ``columns`` are (name, type) pairs."""

    columns: list[tuple[str, str]]
    rows: int


# ClickHouse's own sanity bounds on a Native block header (NativeReader: "suspicious number of
# columns/rows"); the bytes behind them are bounded by the reader's ``limit``.
MAX_BLOCK_COLUMNS = 1_000_000
MAX_BLOCK_ROWS = 1_000_000_000_000
# Type names are cached per name (column_for): bounded so distinct huge names cannot fill memory.
MAX_TYPE_NAME = 64 << 10


def skip_block(r: ByteReader) -> BlockShape:
    """Walk one Native block (without BlockInfo) starting at ``r.pos``, leaving ``r`` after it."""
    ncols = r.read_varint()
    rows = r.read_varint()
    if ncols > MAX_BLOCK_COLUMNS or rows > MAX_BLOCK_ROWS:
        raise LimitExceeded.make(ErrorCode.TOO_MANY_BYTES, f"Suspicious block of {ncols} columns and {rows} rows")
    columns = []
    for _ in range(ncols):
        name = r.read_str()
        type_name = r.read_str()
        if len(type_name) > MAX_TYPE_NAME:
            raise LimitExceeded.make(ErrorCode.TOO_LARGE_STRING_SIZE, f"A type name of {len(type_name)} characters")
        columns.append((name, type_name))
        if rows:
            try:
                column = column_for(type_name)
            except RecursionError:  # Array(Array(... nested past Python's stack
                raise UnsupportedType(type_name[:100] + "...") from None
            column.prefix(r)
            column.data(r, rows)
    return BlockShape(columns, rows)


def skip_block_info(r: ByteReader) -> None:
    """Skip the BlockInfo fields (field number, value) ... 0 that precede a block on the wire."""
    while field := r.read_varint():
        if field == 1:
            r.skip(1)
        elif field == 2:
            r.skip(4)
        else:
            raise ProtocolError(f"unknown BlockInfo field {field}")


def split_blocks(data: bytes) -> list[tuple[BlockShape, bytes]]:
    """Split a Native stream holding several blocks (a non-streaming chdb result)."""
    r = ByteReader(initial=data)
    blocks = []
    while r.pos < len(data):
        start = r.pos
        shape = skip_block(r)
        blocks.append((shape, data[start : r.pos]))
    return blocks


def header_of(chunk: bytes) -> BlockShape:
    """Column names and types of the first block in ``chunk``."""
    return skip_block(ByteReader(initial=chunk))


def retype_block(chunk: bytes, types: dict[int, str]) -> bytes:
    """Replace the type names of columns ``types`` (index -> type) in one Native block.

    chdb writes Native output as for a client of revision 0, which drops the time zone of a
    top-level ``DateTime('tz')`` column (ClickHouse ``NativeWriter``: "for compatibility with old
    clients"). The values are the same UTC seconds, but clickhouse-driver would return naive
    datetimes instead of zone-aware ones, so the server puts the declared type back. Only the
    columns up to the last retyped one are walked; the rest is copied as is.
    """
    r = ByteReader(initial=chunk)
    ncols = r.read_varint()
    rows = r.read_varint()
    out = bytearray(chunk[: r.pos])
    for index in range(max(types) + 1):
        if index >= ncols:
            break
        name = r.read_bytes()
        type_name = r.read_str()
        data_start = r.pos
        if rows:
            column = column_for(type_name)
            column.prefix(r)
            column.data(r, rows)
        out += encode_varint(len(name)) + name + encode_str(types.get(index, type_name))
        out += chunk[data_start : r.pos]
    out += chunk[r.pos :]
    return bytes(out)


def encode_header(columns: list[tuple[str, str]]) -> bytes:
    """A zero-row block: the header a result or an INSERT starts with."""
    out = bytearray(encode_varint(len(columns)) + encode_varint(0))
    for name, type_name in columns:
        out += encode_str(name) + encode_str(type_name)
    return bytes(out)
