"""Compressed frames of the native protocol (ClickHouse ``CompressedReadBuffer``/``WriteBuffer``).

A frame is ``checksum(16) | method(1) | size_with_header(u32) | uncompressed_size(u32) | payload``,
the checksum being CityHash128 (the v1.0.2 variant ClickHouse ships, from ``clickhouse-cityhash``)
of everything after it. When a query asks for compression, every Data packet's block is written
as such frames, while the packet type and table name before it stay plain.

LZ4 is what clickhouse-driver uses with ``compression=True``/``'lz4'``; ZSTD is accepted when the
optional ``zstd`` module (the one clickhouse-driver itself uses) is installed.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType

import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

from .protocol import ByteReader, ErrorCode, LimitExceeded, ProtocolError, ServerError

zstd: ModuleType | None
try:
    zstd = importlib.import_module("zstd")  # optional, untyped: the same module clickhouse-driver uses
except ImportError:  # pragma: no cover - depends on the environment
    zstd = None

METHOD_NONE = 0x02
METHOD_LZ4 = 0x82
METHOD_ZSTD = 0x90

# ClickHouse splits compressed output at max_compress_block_size (1 MiB by default).
MAX_FRAME = 1 << 20
# Clients split what they send at max_compress_block_size (1 MiB; clickhouse-driver the same), so a
# frame claiming more than this is a decompression bomb, refused before anything is inflated.
MAX_UNCOMPRESSED = 8 << 20
# The compressed size of such a frame: LZ4's and ZSTD's worst case (incompressible input) grows it
# by well under 1/128. ClickHouse allows 1 GiB; nothing legitimate needs it, and it is buffered whole.
MAX_FRAME_SIZE = 9 + MAX_UNCOMPRESSED + (MAX_UNCOMPRESSED >> 7) + 64

_HEADER = struct.Struct("<BII")
_CHECKSUM = struct.Struct("<QQ")
CODE_CHECKSUM_DOESNT_MATCH = 40
CODE_UNKNOWN_COMPRESSION_METHOD = 89


def _checksum(data: bytes) -> bytes:
    value = CityHash128(data)
    # clickhouse-driver's write_binary_uint128 order: high 64 bits first.
    return _CHECKSUM.pack((value >> 64) & 0xFFFFFFFFFFFFFFFF, value & 0xFFFFFFFFFFFFFFFF)


def compress_frames(data: bytes, method: int = METHOD_LZ4) -> bytes:
    """Compress ``data`` into one or more frames of at most 1 MiB uncompressed each."""
    out = bytearray()
    for start in range(0, max(len(data), 1), MAX_FRAME):
        chunk = data[start : start + MAX_FRAME]
        if method == METHOD_LZ4:
            payload = lz4.block.compress(chunk, store_size=False)
        elif method == METHOD_ZSTD and zstd is not None:
            payload = zstd.compress(chunk)
        else:
            method, payload = METHOD_NONE, chunk
        body = _HEADER.pack(method, len(payload) + 9, len(chunk)) + payload
        out += _checksum(body) + body
    return bytes(out)


def read_frame(raw: ByteReader) -> tuple[int, bytes]:
    """Read one frame from ``raw``; return (method, decompressed bytes)."""
    checksum = raw.read(16)
    raw.ensure(9)
    method, size_with_header, uncompressed = _HEADER.unpack_from(raw.buf, raw.pos)
    if size_with_header < 9 or size_with_header > MAX_FRAME_SIZE or uncompressed > MAX_UNCOMPRESSED:
        # The frame's bytes stay unread: the connection cannot go on (LimitExceeded closes it).
        raise LimitExceeded.make(ErrorCode.TOO_LARGE_SIZE_COMPRESSED, "Too large size of compressed frame")
    body = raw.read(size_with_header)
    if _checksum(body) != checksum:
        raise ProtocolError("Checksum doesn't match: corrupted data (CHECKSUM_DOESNT_MATCH)")
    payload = body[9:]
    if method == METHOD_LZ4:
        return method, lz4.block.decompress(payload, uncompressed_size=uncompressed)
    if method == METHOD_ZSTD and zstd is not None:
        data = bytes(zstd.decompress(payload))
        if len(data) != uncompressed:  # the frame lied about its size: refuse what it inflated to
            raise ServerError.make(ErrorCode.CORRUPTED_DATA, "Decompressed size differs from the frame header")
        return method, data
    if method == METHOD_NONE:
        return method, payload
    raise ProtocolError(f"Unknown compression method {method:#x} (UNKNOWN_COMPRESSION_METHOD)")


class FrameSource:
    """Pull source for a :class:`ByteReader` that yields decompressed frames from ``raw``.

    Remembers the client's method so replies can use the same one.
    """

    def __init__(self, raw: ByteReader) -> None:
        self.raw = raw
        self.method = METHOD_LZ4

    def __call__(self, _: int) -> bytes:
        self.method, data = read_frame(self.raw)
        return data
