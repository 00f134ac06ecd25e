"""The failure classes of ClickHouse write errors (plain data; one test against the real server)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from clickhouse_driver import Client, errors

from analytics_platform.clickhouse_server.testing import start_server_process
from streams.clickhouse_errors import DeadLetterDeliveryError, FailureClass, RowEncodingError, failure_classify

PARTITIONS = (
    "DB::Exception: Too many partitions for single INSERT block (more than 100). The limit is controlled by"
    " 'max_partitions_per_insert_block' setting. (TOO_MANY_PARTS)"
)
PARTS = "DB::Exception: Too many parts (3001 with average size of 1.00 MiB) in table 'default.events'. (TOO_MANY_PARTS)"


def _server(code: int, message: str = "DB::Exception: x") -> errors.ServerException:
    return errors.ServerException(message, code)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.NetworkError("Connection refused"), FailureClass.RETRYABLE),
        (errors.SocketTimeoutError("timed out"), FailureClass.RETRYABLE),
        (EOFError("Unexpected EOF while reading bytes"), FailureClass.RETRYABLE),
        (ConnectionResetError(104, "reset"), FailureClass.RETRYABLE),
        (TimeoutError(), FailureClass.RETRYABLE),
        (_server(202), FailureClass.RETRYABLE),  # TOO_MANY_SIMULTANEOUS_QUERIES
        (_server(241), FailureClass.RETRYABLE),  # MEMORY_LIMIT_EXCEEDED
        (_server(159), FailureClass.RETRYABLE),  # TIMEOUT_EXCEEDED
        (_server(252, PARTS), FailureClass.RETRYABLE),  # merges behind: clears by itself
        (_server(60), FailureClass.RETRYABLE),  # UNKNOWN_TABLE: a migration to apply, not bad rows
        (_server(516), FailureClass.RETRYABLE),  # AUTHENTICATION_FAILED
        (DeadLetterDeliveryError("not acknowledged"), FailureClass.RETRYABLE),
        (_server(252, PARTITIONS), FailureClass.DETERMINISTIC),  # this block, every time
        (_server(376), FailureClass.DETERMINISTIC),  # CANNOT_PARSE_UUID
        (_server(72), FailureClass.DETERMINISTIC),  # CANNOT_PARSE_NUMBER
        (_server(27), FailureClass.DETERMINISTIC),  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        (_server(117), FailureClass.DETERMINISTIC),  # INCORRECT_DATA
        (RowEncodingError("Integer exceeds 64-bit range"), FailureClass.DETERMINISTIC),
        (_server(49), FailureClass.UNKNOWN),  # LOGICAL_ERROR: a server bug, retried loudly
        (_server(100_000), FailureClass.UNKNOWN),
        (ValueError("something else"), FailureClass.UNKNOWN),
    ],
)
def test_failure_classify(error: BaseException, expected: FailureClass) -> None:
    assert failure_classify(error) is expected


def test_an_orjson_encoding_error_is_the_rows_fault() -> None:
    with pytest.raises(orjson.JSONEncodeError) as raised:
        orjson.dumps([2**70])
    assert failure_classify(raised.value) is FailureClass.DETERMINISTIC


def test_the_servers_size_bounds_are_the_blocks_fault(tmp_path: Path) -> None:
    """A chunk over the embedded server's packet bound is split, not retried forever.

    Real server, bound lowered to 1 MiB: a query text over it (the sink's rows ride in the text)
    is refused with QUERY_IS_TOO_LARGE, which must classify as deterministic so the sink halves
    the chunk; a smaller query on a new connection passes.
    """
    server = start_server_process(data_dir=tmp_path / "ch", extra_args=["--max-packet-bytes", str(1 << 20)])
    with server:
        client = Client(**server.client_kwargs())
        with pytest.raises(errors.ServerException) as raised:
            client.execute("SELECT length('" + "x" * (2 << 20) + "')")
        assert raised.value.code == 229
        assert failure_classify(raised.value) is FailureClass.DETERMINISTIC
        half = Client(**server.client_kwargs())
        assert half.execute("SELECT length('" + "x" * (100 << 10) + "')") == [(100 << 10,)]
