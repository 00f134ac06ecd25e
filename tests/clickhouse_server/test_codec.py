"""The server's pure pieces on plain data: INSERT routing, type layouts, frames, varints."""

from __future__ import annotations

import time

import pytest

from analytics_platform.clickhouse_server.compression import METHOD_LZ4, METHOD_NONE, FrameSource, compress_frames
from analytics_platform.clickhouse_server.native import UnsupportedType, column_for, split_args
from analytics_platform.clickhouse_server.protocol import ByteReader, encode_varint
from analytics_platform.clickhouse_server.sql import first_keyword, inline_insert, insert_target


@pytest.mark.parametrize(
    ("sql", "table", "columns", "settings"),
    [
        ("INSERT INTO t VALUES", "t", None, ""),
        ("insert into db.`my t` (a, `b c`, n.x) values ;", "db.`my t`", ["a", "b c", "n.x"], ""),
        ("INSERT INTO TABLE t (a) SETTINGS async_insert = 0 VALUES", "t", ["a"], "SETTINGS async_insert = 0"),
        ("/* c */ INSERT INTO t FORMAT Native", "t", None, ""),
        ("INSERT INTO t", "t", None, ""),
    ],
)
def test_insert_waiting_for_client_data(sql: str, table: str, columns: list[str] | None, settings: str) -> None:
    target = insert_target(sql)

    assert target is not None
    assert (target.table, target.columns, target.settings) == (table, columns, settings)
    assert "INSERT INTO" in target.head.upper() and target.head.endswith((table, ")"))


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t SELECT 1",
        "INSERT INTO t (a) SELECT 1",
        "INSERT INTO t WITH 1 AS x SELECT x",
        "INSERT INTO t VALUES (1, 'a')",
        "INSERT INTO t FORMAT CSV 1,a",
        "INSERT INTO FUNCTION file('x.csv') VALUES",
        "SELECT 1",
    ],
)
def test_statements_chdb_runs_itself(sql: str) -> None:
    assert insert_target(sql) is None


def test_first_keyword_skips_comments() -> None:
    assert first_keyword("  -- note\n /* x */ select 1") == "SELECT"
    assert first_keyword("(SELECT 1)") == "("
    assert first_keyword("") == ""


def test_type_arguments_split_on_top_level_commas_only() -> None:
    assert split_args("String, Tuple(a Int8, b String), Enum8('x,y' = 1)") == [
        "String",
        "Tuple(a Int8, b String)",
        "Enum8('x,y' = 1)",
    ]


def _skip(type_name: str, data: bytes, rows: int) -> int:
    reader = ByteReader(initial=data)
    column = column_for(type_name)
    column.prefix(reader)
    column.data(reader, rows)
    return reader.pos


def test_column_layouts() -> None:
    strings = encode_varint(3) + b"abc" + encode_varint(200) + b"x" * 200
    assert _skip("String", strings, 2) == len(strings)
    assert _skip("Nullable(Int32)", b"\x00\x01" + b"\x00" * 8, 2) == 10
    offsets = (1).to_bytes(8, "little") + (3).to_bytes(8, "little")
    assert _skip("Array(UInt16)", offsets + b"\x00" * 6, 2) == 22
    assert _skip("Map(String, UInt8)", offsets + (encode_varint(1) + b"k") * 3 + b"\x00" * 3, 2) == 16 + 6 + 3
    assert _skip("Decimal(38, 2)", b"\x00" * 32, 2) == 32
    with pytest.raises(UnsupportedType):
        column_for("Variant(String, UInt64)")


def test_column_walk_waits_for_more_bytes() -> None:
    strings = b"".join(encode_varint(n) + b"y" * n for n in (1, 300, 70_000))
    chunks = [strings[i : i + 1000] for i in range(0, len(strings), 1000)]

    reader = ByteReader(lambda _n: chunks.pop(0) if chunks else b"")
    column_for("String").data(reader, 3)

    assert reader.pos == len(strings)


@pytest.mark.parametrize("method", [METHOD_LZ4, METHOD_NONE])
def test_frames_round_trip_across_the_1_mib_limit(method: int) -> None:
    payload = bytes(range(256)) * 9000  # > 2 MiB: three frames

    raw = ByteReader(initial=compress_frames(payload, method))
    decompressed = ByteReader(FrameSource(raw))

    assert decompressed.read(len(payload)) == payload


@pytest.mark.parametrize(
    ("sql", "fmt", "data"),
    [
        ('INSERT INTO t (a, b) FORMAT JSONCompactColumns\n[[1],["x"]]', "JSONCompactColumns", '[[1],["x"]]'),
        ('INSERT INTO t SETTINGS x = 1 FORMAT JSONEachRow \t {"a": 1}', "JSONEachRow", '{"a": 1}'),
        ("INSERT INTO t FORMAT JSONCompactEachRow \r\n\n[1]", "JSONCompactEachRow", "\n[1]"),
    ],
)
def test_inline_json_insert_is_split_where_clickhouse_starts_the_data(sql: str, fmt: str, data: str) -> None:
    inline = inline_insert(sql)

    assert inline is not None
    assert (inline.format, sql[inline.data_start :]) == (fmt, data)
    assert insert_target(sql) is None


@pytest.mark.parametrize(
    "sql",
    ["INSERT INTO t FORMAT CSV\n1,a", "INSERT INTO t VALUES (1)", "INSERT INTO t FORMAT JSONEachRow", "SELECT 1"],
)
def test_other_statements_are_not_spooled_as_inline_json(sql: str) -> None:
    assert inline_insert(sql) is None


def test_routing_an_insert_does_not_lex_its_inline_data() -> None:
    # Lexing 20 MB of JSON in Python took seconds per insert; routing must look at the head only.
    sql = "INSERT INTO t (a, s) FORMAT JSONCompactColumns\n[[" + ",".join(["1"] * 5_000_000) + '],["x"]]'
    started = time.perf_counter()
    assert insert_target(sql) is None
    inline = inline_insert(sql)
    assert inline is not None and inline.target.columns == ["a", "s"]
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("method", [METHOD_LZ4, METHOD_NONE])
def test_a_frame_claiming_a_huge_size_is_refused_before_inflating(method: int) -> None:
    import struct

    from analytics_platform.clickhouse_server.compression import MAX_UNCOMPRESSED, _checksum, read_frame
    from analytics_platform.clickhouse_server.protocol import LimitExceeded

    body = struct.pack("<BII", method, 9 + 4, MAX_UNCOMPRESSED + 1) + b"\x00\x00\x00\x00"
    with pytest.raises(LimitExceeded) as caught:  # fatal: the frame's bytes are left unread
        read_frame(ByteReader(initial=_checksum(body) + body))
    assert caught.value.code == 39  # TOO_LARGE_SIZE_COMPRESSED, as ClickHouse reports it
