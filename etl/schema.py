"""ClickHouse column types -> Arrow fields -> BigQuery schema, derived from the live table.

The export reads each table's columns from ClickHouse (``DESCRIBE TABLE``) at run time, so a new
column added by a ClickHouse migration reaches Parquet and BigQuery without a second list to keep
in step. One mapping serves both destinations: the Parquet files of the local archive carry the
same types BigQuery gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
from google.cloud import bigquery

_WRAPPER = re.compile(r"^(LowCardinality|Nullable)\((.*)\)$")
_DECIMAL = re.compile(r"^Decimal(?:32|64|128|256)?\((\d+),\s*(\d+)\)$")
_DECIMAL_N = re.compile(r"^Decimal(32|64|128|256)\((\d+)\)$")
_SCALARS: dict[str, tuple[pa.DataType, str]] = {
    "String": (pa.string(), "STRING"),
    "UUID": (pa.string(), "STRING"),
    "IPv4": (pa.string(), "STRING"),
    "IPv6": (pa.string(), "STRING"),
    "Bool": (pa.bool_(), "BOOL"),
    "UInt8": (pa.int64(), "INT64"),
    "UInt16": (pa.int64(), "INT64"),
    "UInt32": (pa.int64(), "INT64"),
    # BigQuery has no unsigned 64-bit type; values above 2**63-1 fail the export loudly.
    "UInt64": (pa.int64(), "INT64"),
    "Int8": (pa.int64(), "INT64"),
    "Int16": (pa.int64(), "INT64"),
    "Int32": (pa.int64(), "INT64"),
    "Int64": (pa.int64(), "INT64"),
    "Float32": (pa.float64(), "FLOAT64"),
    "Float64": (pa.float64(), "FLOAT64"),
    "Date": (pa.date32(), "DATE"),
    "Date32": (pa.date32(), "DATE"),
}
# BigQuery TIMESTAMP has microsecond precision; Parquet carries it as UTC-adjusted micros.
_TIMESTAMP = pa.timestamp("us", tz="UTC")


class UnsupportedColumnType(ValueError):
    """A ClickHouse type with no faithful BigQuery equivalent; add it here rather than guess."""


@dataclass(frozen=True)
class Column:
    """One exported column: how to select it from ClickHouse and how it lands downstream."""

    name: str
    clickhouse_type: str
    arrow_type: pa.DataType
    bigquery_type: str
    nullable: bool
    repeated: bool
    select_expression: str

    @property
    def is_timestamp(self) -> bool:
        return self.bigquery_type == "TIMESTAMP"

    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type, nullable=self.nullable or self.repeated)

    def bigquery_field(self) -> bigquery.SchemaField:
        mode = "REPEATED" if self.repeated else ("NULLABLE" if self.nullable else "REQUIRED")
        return bigquery.SchemaField(self.name, self.bigquery_type, mode=mode)


def _quote(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _unwrap(ch_type: str) -> tuple[str, bool]:
    nullable = False
    while match := _WRAPPER.match(ch_type):
        nullable = nullable or match.group(1) == "Nullable"
        ch_type = match.group(2).strip()
    return ch_type, nullable


def _scalar(ch_type: str) -> tuple[pa.DataType, str, bool]:
    """(arrow type, BigQuery type, is a DateTime) of a non-array type."""
    if ch_type in _SCALARS:
        arrow_type, bq_type = _SCALARS[ch_type]
        return arrow_type, bq_type, False
    if ch_type.startswith(("DateTime64", "DateTime")):
        return _TIMESTAMP, "TIMESTAMP", True
    if ch_type.startswith(("Enum8(", "Enum16(", "FixedString(")):
        return pa.string(), "STRING", False
    if match := _DECIMAL.match(ch_type):
        precision, scale = int(match.group(1)), int(match.group(2))
    elif match := _DECIMAL_N.match(ch_type):
        precision = {"32": 9, "64": 18, "128": 38, "256": 76}[match.group(1)]
        scale = int(match.group(2))
    else:
        raise UnsupportedColumnType(f"no BigQuery mapping for ClickHouse type {ch_type}")
    if precision - scale <= 29 and scale <= 9:
        return pa.decimal128(38, 9), "NUMERIC", False
    raise UnsupportedColumnType(f"{ch_type} does not fit BigQuery NUMERIC")


def column_from_clickhouse(name: str, ch_type: str) -> Column:
    base, nullable = _unwrap(ch_type)
    repeated = False
    if base.startswith("Array(") and base.endswith(")"):
        repeated = True
        base, _ = _unwrap(base[len("Array(") : -1].strip())
    arrow_type, bq_type, is_datetime = _scalar(base)
    expression = _quote(name)
    if is_datetime and not repeated:
        # A DateTime without a zone is returned in the server's zone; pin UTC so the values mean
        # the same instant whatever the production server's timezone is.
        expression = f"toTimeZone({expression}, 'UTC') AS {_quote(name)}"
    if repeated:
        arrow_type = pa.list_(arrow_type)
    return Column(
        name=name,
        clickhouse_type=ch_type,
        arrow_type=arrow_type,
        bigquery_type=bq_type,
        nullable=nullable and not repeated,
        repeated=repeated,
        select_expression=expression,
    )


def arrow_schema(columns: list[Column]) -> pa.Schema:
    return pa.schema([column.arrow_field() for column in columns])


def bigquery_schema(columns: list[Column]) -> list[bigquery.SchemaField]:
    return [column.bigquery_field() for column in columns]
