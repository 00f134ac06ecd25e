"""Every common column type round-trips exactly through clickhouse-driver, compressed or not."""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from clickhouse_driver import Client

from analytics_platform.clickhouse_server.compression import zstd

from .conftest import ClientFactory

pytestmark = pytest.mark.clickhouse

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC

# (type, rows); each value must come back equal (datetimes compared as instants).
CASES: list[tuple[str, list[Any]]] = [
    ("Int8", [-128, 0, 127]),
    ("Int16", [-32768, 32767]),
    ("Int32", [-(2**31), 2**31 - 1]),
    ("Int64", [-(2**63), 2**63 - 1]),
    ("Int128", [-(2**127), 2**127 - 1]),
    ("Int256", [-(2**255), 2**255 - 1]),
    ("UInt8", [0, 255]),
    ("UInt16", [0, 65535]),
    ("UInt32", [0, 2**32 - 1]),
    ("UInt64", [0, 2**64 - 1]),
    ("UInt128", [0, 2**128 - 1]),
    ("UInt256", [0, 2**256 - 1]),
    ("Float32", [0.0, -1.5, 3.25, float("inf")]),
    ("Float64", [0.1, -1e300, 2.5e-308]),
    ("Decimal(9, 2)", [decimal.Decimal("1234567.89"), decimal.Decimal("-0.01")]),
    ("Decimal(18, 6)", [decimal.Decimal("123456789012.345678")]),
    ("Decimal(38, 10)", [decimal.Decimal("1234567890123456789012345678.0123456789")]),
    ("Decimal(76, 20)", [decimal.Decimal("-12345678901234567890123456789012345678901234567890.12345678901234567890")]),
    ("String", ["", "hello", "ünïcødé ✓", "x" * 100_000]),
    ("FixedString(4)", ["abcd", "wxyz"]),
    ("UUID", [uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0)]),
    ("Date", [dt.date(1970, 1, 1), dt.date(2024, 2, 29), dt.date(2149, 6, 6)]),
    ("Date32", [dt.date(1900, 1, 1), dt.date(2299, 12, 31)]),
    ("DateTime", [dt.datetime(2024, 5, 6, 7, 8, 9), dt.datetime(1970, 1, 1, 0, 0, 1)]),
    ("DateTime('UTC')", [dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)]),
    ("DateTime('Europe/Berlin')", [dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=BERLIN)]),
    ("DateTime64(3, 'UTC')", [dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)]),
    ("DateTime64(6, 'Europe/Berlin')", [dt.datetime(2024, 12, 6, 7, 8, 9, 123456, tzinfo=BERLIN)]),
    ("Enum8('b' = -2, 'a' = 1)", ["a", "b"]),  # ClickHouse orders enum values
    ("Enum16('x' = 1000, 'y y' = 2000)", ["x", "y y"]),
    ("LowCardinality(String)", ["a", "b", "a", "c"]),
    ("LowCardinality(Nullable(String))", ["a", None, "a"]),
    ("Nullable(Int32)", [1, None, -3]),
    ("Nullable(String)", [None, "x"]),
    ("Array(Int32)", [[], [1, 2, 3]]),
    ("Array(Array(String))", [[["a"], [], ["b", "c"]], []]),
    ("Array(Nullable(String))", [[None, "x"]]),
    ("Array(LowCardinality(String))", [["p", "q", "p"], []]),
    ("Tuple(Int32, String)", [(1, "a"), (-2, "")]),
    ("Tuple(a Int64, b Array(String))", [(1, ["x", "y"])]),
    ("Map(String, UInt64)", [{}, {"k": 1, "l": 2}]),
    ("Map(LowCardinality(String), Array(Nullable(Float64)))", [{"k": [1.5, None]}]),
    ("Bool", [True, False]),
    ("IPv4", [ipaddress.IPv4Address("10.1.2.3"), ipaddress.IPv4Address("255.255.255.255")]),
    ("IPv6", [ipaddress.IPv6Address("::1"), ipaddress.IPv6Address("2001:db8::8a2e:370:7334")]),
]

COMPRESSIONS = [
    pytest.param(False, id="plain"),
    pytest.param("lz4", id="lz4"),
    pytest.param("zstd", id="zstd", marks=pytest.mark.skipif(zstd is None, reason="zstd module not installed")),
]


def _comparable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # the driver returns naive datetimes in the server's zone (UTC)
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize(("type_name", "values"), CASES, ids=[c[0] for c in CASES])
def test_type_round_trip(
    make_client: ClientFactory, table_name: str, compression: Any, type_name: str, values: list[Any]
) -> None:
    client = make_client(compression=compression)
    client.execute(f"CREATE TABLE {table_name} (id UInt32, v {type_name}) ENGINE = MergeTree ORDER BY id")

    inserted = client.execute(f"INSERT INTO {table_name} (id, v) VALUES", list(enumerate(values)))

    assert inserted == len(values)
    rows, columns = client.execute(f"SELECT id, v FROM {table_name} ORDER BY id", with_column_types=True)
    assert columns == [("id", "UInt32"), ("v", type_name)]
    assert [_comparable(v) for _, v in rows] == [_comparable(v) for v in values]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_non_utf8_bytes_with_strings_as_bytes(make_client: ClientFactory, table_name: str, compression: Any) -> None:
    client = make_client(compression=compression, settings={"strings_as_bytes": True})
    client.execute(f"CREATE TABLE {table_name} (s String, f FixedString(3)) ENGINE = MergeTree ORDER BY tuple()")
    values = [(b"\xff\xfe\x00raw", b"\x00\x01\x80"), (bytes(range(256)), b"abc")]

    client.execute(f"INSERT INTO {table_name} VALUES", values)

    assert client.execute(f"SELECT s, f FROM {table_name} ORDER BY length(s)") == values


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_wide_table_many_blocks(make_client: ClientFactory, table_name: str, compression: Any) -> None:
    """Several insert blocks and result blocks of a multi-column table, with NULLs and arrays."""
    client = make_client(compression=compression, settings={"insert_block_size": 7_000})
    client.execute(
        f"CREATE TABLE {table_name} (id UInt64, s String, n Nullable(Int64), a Array(LowCardinality(String)),"
        " m Map(String, Int8), d DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY id"
    )
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    rows = [
        (
            i,
            f"s{i}" * (i % 5),
            None if i % 3 else -i,
            [str(i % 7)] * (i % 4),
            {"k": i % 100},
            base + dt.timedelta(microseconds=i),
        )
        for i in range(30_000)
    ]

    client.execute(f"INSERT INTO {table_name} VALUES", rows)

    back = client.execute(f"SELECT * FROM {table_name} ORDER BY id", settings={"max_block_size": 4096})
    assert back == rows


def test_insert_with_reordered_columns_and_defaults(client: Client, table_name: str) -> None:
    client.execute(
        f"CREATE TABLE {table_name} (a UInt32, b String DEFAULT 'dflt', c UInt32 MATERIALIZED a * 2,"
        " d UInt32 ALIAS a + 1) ENGINE = MergeTree ORDER BY a"
    )

    client.execute(f"INSERT INTO {table_name} (b, a) VALUES", [("x", 1)])
    client.execute(f"INSERT INTO {table_name} (a) VALUES", [(2,)])
    client.execute(f"INSERT INTO {table_name} VALUES", [(3, "z")])  # all but MATERIALIZED/ALIAS

    assert client.execute(f"SELECT a, b, c, d FROM {table_name} ORDER BY a") == [
        (1, "x", 2, 2),
        (2, "dflt", 4, 3),
        (3, "z", 6, 4),
    ]
