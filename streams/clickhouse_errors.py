"""Which ClickHouse write failures to retry and which to isolate: one function, the codes named.

The sink (streams/sinks.py) does one of two things with a failed INSERT:

* ``RETRYABLE``: nothing is wrong with the rows; the same INSERT can succeed later (the server is
  down or overloaded, the network failed, an operator has to fix the schema or the permissions).
  The sink stops writing and raises backpressure; Quix replays from the committed offsets.
* ``DETERMINISTIC``: this block of rows will fail the same way every time (a value the column's type
  cannot take, a block spanning too many partitions). Retrying would stop the pipeline forever, so
  the sink splits the block until it finds the offending rows, dead-letters them and writes the rest.
* ``UNKNOWN``: anything not listed below. Treated as retryable: an error nobody has classified is
  more often the environment (a new server failure mode, a driver bug) than the data, and isolating
  it would be wrong at scale: when every sub-insert fails the same way, bisection dead-letters
  *every* row of the chunk, diverting good data out of the pipeline. Retrying loses nothing, and is
  not silent: each failure is logged with its code, counted by class
  (``streams_clickhouse_failures_total{class}``) and ``streams_clickhouse_failing_seconds`` grows
  until a write succeeds, so an alert can page someone to classify it.

Schema and access errors (unknown table or column, read-only, authentication) are *retryable* on
purpose: they are a deployment fault (a migration not applied yet), the same for every row, and
fixed by an operator; dead-lettering on them would empty the pipeline into the dead-letter topic.

Codes are ClickHouse's (``src/Common/ErrorCodes.cpp``; names checked with ``errorCodeToName`` on
chdb 26.9).
"""

from __future__ import annotations

import enum
from typing import Final

import orjson
from clickhouse_driver import errors
from confluent_kafka import KafkaException


class FailureClass(enum.StrEnum):
    RETRYABLE = "retryable"
    DETERMINISTIC = "deterministic"
    UNKNOWN = "unknown"


# The server or the path to it is unavailable or overloaded right now.
TRANSIENT_CODES: Final[dict[int, str]] = {
    3: "UNEXPECTED_END_OF_FILE",  # the connection closed mid-packet
    23: "CANNOT_READ_FROM_ISTREAM",
    24: "CANNOT_WRITE_TO_OSTREAM",
    32: "ATTEMPT_TO_READ_AFTER_EOF",  # the driver's view of a dropped connection
    95: "CANNOT_READ_FROM_SOCKET",
    96: "CANNOT_WRITE_TO_SOCKET",
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    173: "CANNOT_ALLOCATE_MEMORY",
    198: "DNS_ERROR",
    201: "QUOTA_EXCEEDED",  # quotas are per interval: the next interval admits the write
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    204: "CANNOT_FSYNC",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",  # the server's other queries hold the memory; it frees up
    242: "TABLE_IS_READ_ONLY",  # a replica lost ZooKeeper, or the disk went read-only
    243: "NOT_ENOUGH_SPACE",
    244: "UNEXPECTED_ZOOKEEPER_ERROR",
    252: "TOO_MANY_PARTS",  # merges are behind (parts_to_throw_insert); see partition_limit_error
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    319: "UNKNOWN_STATUS_OF_INSERT",  # replayed anyway; the offset rule skips what did land
    364: "RECEIVED_ERROR_TOO_MANY_REQUESTS",
    394: "QUERY_WAS_CANCELLED",  # e.g. the server shutting down
    410: "EXTERNAL_SERVER_IS_NOT_RESPONDING",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",  # the server's thread pools are full
    473: "DEADLOCK_AVOIDED",
    735: "QUERY_WAS_CANCELLED_BY_CLIENT",
    745: "SERVER_OVERLOADED",
    749: "TCP_CONNECTION_LIMIT_REACHED",
    999: "KEEPER_EXCEPTION",
}

# The deployment is wrong for every row alike; an operator fixes it, then the same INSERT succeeds.
OPERATOR_CODES: Final[dict[int, str]] = {
    16: "NO_SUCH_COLUMN_IN_TABLE",  # a migration not applied yet
    47: "UNKNOWN_IDENTIFIER",
    60: "UNKNOWN_TABLE",
    81: "UNKNOWN_DATABASE",
    164: "READONLY",
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    194: "REQUIRED_PASSWORD",
    195: "IP_ADDRESS_NOT_ALLOWED",
    291: "DATABASE_ACCESS_DENIED",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
}

# This block of rows fails the same way on every attempt: a value the column type cannot take, or
# a block the server refuses as a whole (split it and the parts pass).
DATA_CODES: Final[dict[int, str]] = {
    6: "CANNOT_PARSE_TEXT",
    25: "CANNOT_PARSE_ESCAPE_SEQUENCE",
    26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED",  # e.g. a string where the column wants a number
    38: "CANNOT_PARSE_DATE",
    39: "TOO_LARGE_SIZE_COMPRESSED",  # a compressed frame over the server's bound: smaller blocks pass
    41: "CANNOT_PARSE_DATETIME",
    53: "TYPE_MISMATCH",
    69: "ARGUMENT_OUT_OF_BOUND",
    70: "CANNOT_CONVERT_TYPE",
    72: "CANNOT_PARSE_NUMBER",  # e.g. a negative number for a UInt column
    117: "INCORRECT_DATA",  # malformed JSON values
    131: "TOO_LARGE_STRING_SIZE",
    229: "QUERY_IS_TOO_LARGE",  # the rows ride in the query text (the sink's chunks): halves pass
    307: "TOO_MANY_BYTES",  # a native block over the server's packet bound
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
    349: "CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN",
    376: "CANNOT_PARSE_UUID",
    395: "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO",
    407: "DECIMAL_OVERFLOW",
    441: "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
    467: "CANNOT_PARSE_BOOL",
    469: "VIOLATED_CONSTRAINT",
    565: "TOO_MANY_PARTITIONS",
    621: "CANNOT_NORMALIZE_STRING",
    632: "UNEXPECTED_DATA_AFTER_PARSED_VALUE",
    675: "CANNOT_PARSE_IPV4",
    676: "CANNOT_PARSE_IPV6",
    691: "UNKNOWN_ELEMENT_OF_ENUM",
}

TOO_MANY_PARTS: Final = 252
# Code 252 also means "Too many partitions for single INSERT block (more than N)": the block spans
# more partitions than ``max_partitions_per_insert_block``. That one is deterministic for the block
# (the same rows fail again; smaller blocks pass), whereas "Too many parts" (merges behind) clears
# by itself. Only the message tells them apart.
PARTITIONS_PER_INSERT_MESSAGE: Final = "Too many partitions for single INSERT block"


class RowEncodingError(ValueError):
    """A row the sink could not encode as JSON (a value orjson refuses): the row's own fault."""


class DeadLetterDeliveryError(RuntimeError):
    """The broker did not acknowledge the dead letters of rejected rows: retry the chunk."""


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a clickhouse-driver error, else None."""
    code = getattr(exc, "code", None) if isinstance(exc, errors.Error) else None
    return code if isinstance(code, int) else None


def partition_limit_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing a block for spanning too many partitions."""
    return error_code(exc) == TOO_MANY_PARTS and PARTITIONS_PER_INSERT_MESSAGE in str(exc)


def failure_classify(exc: BaseException) -> FailureClass:
    """Retry ``exc`` (the server, the network, the deployment) or isolate its rows (the data)?"""
    if isinstance(exc, RowEncodingError | orjson.JSONEncodeError):
        return FailureClass.DETERMINISTIC
    if isinstance(exc, DeadLetterDeliveryError | KafkaException):
        return FailureClass.RETRYABLE  # the broker, not ClickHouse: nothing wrong with the rows
    # The driver's own network errors, and what the socket layer raises under them (connection
    # refused or reset, timeouts, a closed connection read as EOF).
    if isinstance(exc, errors.NetworkError | errors.SocketTimeoutError | EOFError | OSError):
        return FailureClass.RETRYABLE
    if isinstance(exc, errors.UnexpectedPacketFromServerError | errors.UnknownPacketFromServerError):
        return FailureClass.RETRYABLE  # a desynchronised connection; a fresh one is made next time
    code = error_code(exc)
    if code is None:
        return FailureClass.UNKNOWN
    if partition_limit_error(exc):
        return FailureClass.DETERMINISTIC
    if code in TRANSIENT_CODES or code in OPERATOR_CODES:
        return FailureClass.RETRYABLE
    if code in DATA_CODES:
        return FailureClass.DETERMINISTIC
    return FailureClass.UNKNOWN
