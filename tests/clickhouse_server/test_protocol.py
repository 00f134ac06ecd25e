"""Protocol behaviour clickhouse-driver relies on: errors, streaming, settings, auth, cancel."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process

from .conftest import ClientFactory

pytestmark = pytest.mark.clickhouse


@pytest.mark.parametrize(
    ("sql", "code", "name"),
    [
        ("SELECT * FROM no_such_table_xyz", 60, "UNKNOWN_TABLE"),
        ("SELEC 1", 62, "SYNTAX_ERROR"),
        ("SELECT no_such_column", 47, "UNKNOWN_IDENTIFIER"),
        ("SELECT throwIf(1)", 395, "FUNCTION_THROW_IF_VALUE_IS_NON_ZERO"),
        ("CREATE TABLE bad (x UInt8) ENGINE = NoSuchEngine", 56, "UNKNOWN_STORAGE"),
        ("INSERT INTO no_such_table_xyz VALUES", 60, "UNKNOWN_TABLE"),
    ],
)
def test_errors_carry_clickhouse_codes_and_connection_stays_usable(
    client: Client, sql: str, code: int, name: str
) -> None:
    with pytest.raises(ServerException) as raised:
        client.execute(sql, [(1,)] if sql.startswith("INSERT") else None)

    assert raised.value.code == code
    assert "DB::Exception" in raised.value.message and f"({name})" in raised.value.message
    assert client.execute("SELECT 1") == [(1,)]


def test_error_in_the_middle_of_a_stream(client: Client) -> None:
    with pytest.raises(ServerException) as raised:
        list(
            client.execute_iter(
                "SELECT throwIf(number = 150000) FROM numbers(300000)", settings={"max_block_size": 10000}
            )
        )

    assert raised.value.code == 395
    assert client.execute("SELECT 2") == [(2,)]


def test_insert_error_after_sample_block_keeps_session_in_sync(client: Client, table_name: str) -> None:
    client.execute(f"CREATE TABLE {table_name} (a UInt8, s String CODEC(ZSTD)) ENGINE = MergeTree ORDER BY a")
    client.execute(f"ALTER TABLE {table_name} ADD CONSTRAINT small CHECK a < 100")

    with pytest.raises(ServerException) as raised:
        client.execute(f"INSERT INTO {table_name} VALUES", [(1, "x"), (200, "y")])

    assert raised.value.code == 469  # VIOLATED_CONSTRAINT
    client.execute(f"INSERT INTO {table_name} VALUES", [(2, "ok")])
    assert client.execute(f"SELECT a, s FROM {table_name}") == [(2, "ok")]


def test_execute_iter_streams_blocks(client: Client) -> None:
    rows = client.execute_iter(
        "SELECT number, toString(number) FROM numbers(250000)", settings={"max_block_size": 1000}
    )

    total = 0
    for expected, (number, text) in enumerate(rows):
        assert number == expected and text == str(expected)
        total += 1
    assert total == 250000


def test_with_column_types_query_id_and_client_side_params(client: Client) -> None:
    query_id = str(uuid.uuid4())

    rows, columns = client.execute(
        "SELECT %(n)s + 1 AS n, %(s)s AS s, toDate(%(d)s) AS d, %(items)s AS items",
        {"n": 41, "s": "it's", "d": dt.date(2024, 1, 2), "items": [1, 2]},
        with_column_types=True,
        query_id=query_id,
    )

    assert rows == [(42, "it's", dt.date(2024, 1, 2), [1, 2])]
    assert [name for name, _ in columns] == ["n", "s", "d", "items"]
    assert client.last_query.progress.rows >= 1


def test_empty_result_still_has_a_header(client: Client) -> None:
    rows, columns = client.execute("SELECT 1 AS one, 'x' AS two WHERE 0", with_column_types=True)

    assert rows == [] and columns == [("one", "UInt8"), ("two", "String")]


def test_query_settings_apply_to_one_query_only(client: Client) -> None:
    def current() -> str:
        return str(client.execute("SELECT getSetting('max_threads')")[0][0])

    before = current()
    assert client.execute("SELECT getSetting('max_threads')", settings={"max_threads": 1}) == [(1,)]
    assert current() == before
    client.execute("SET max_threads = 1")  # a session SET persists, as on a real server
    assert current() == "1"
    assert client.execute("SELECT getSetting('max_threads')", settings={"max_threads": 2}) == [(2,)]
    assert current() == "1"


def test_unknown_setting_is_ignored_unless_important(make_client: ClientFactory) -> None:
    assert make_client().execute("SELECT 1", settings={"no_such_setting_xyz": 1}) == [(1,)]
    strict = make_client(settings_is_important=True)
    with pytest.raises(ServerException) as raised:
        strict.execute("SELECT 1", settings={"no_such_setting_xyz": 1})
    assert raised.value.code == 115


def test_insert_deduplication_token_flows_to_chdb(client: Client, table_name: str) -> None:
    client.execute(
        f"CREATE TABLE {table_name} (id UInt64) ENGINE = MergeTree ORDER BY id"
        " SETTINGS non_replicated_deduplication_window = 100"
    )
    token = {"insert_deduplication_token": "batch-1"}

    client.execute(f"INSERT INTO {table_name} VALUES", [(1,), (2,)], settings=token)
    client.execute(f"INSERT INTO {table_name} VALUES", [(1,), (2,)], settings=token)
    client.execute(f"INSERT INTO {table_name} VALUES", [(1,), (2,)], settings={"insert_deduplication_token": "batch-2"})

    assert client.execute(f"SELECT count() FROM {table_name}") == [(4,)]


def test_statements_insert_select_and_inline_values(client: Client, table_name: str) -> None:
    client.execute(f"CREATE TABLE {table_name} (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
    client.execute(f"INSERT INTO {table_name} SELECT number, toString(number) FROM numbers(10)")
    client.execute(f"INSERT INTO {table_name} (a, b) VALUES (100, 'inline')")
    client.execute(f"OPTIMIZE TABLE {table_name} FINAL")

    assert client.execute(f"SELECT count(), max(a) FROM {table_name}") == [(11, 100)]
    assert (table_name,) in client.execute("SHOW TABLES")
    assert ("a", "UInt32", "", "", "", "", "") in client.execute(f"DESCRIBE TABLE {table_name}")
    assert client.execute(f"EXISTS TABLE {table_name}") == [(1,)]


def test_database_from_handshake_and_use(make_client: ClientFactory) -> None:
    admin = make_client()
    db = f"db_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {db}")
    try:
        scoped = make_client(database=db)
        assert scoped.execute("SELECT currentDatabase()") == [(db,)]
        scoped.execute("CREATE TABLE t (x DateTime('Asia/Tokyo')) ENGINE = MergeTree ORDER BY x")
        scoped.execute("INSERT INTO t VALUES", [(dt.datetime(2024, 1, 1, tzinfo=dt.UTC),)])
        ((value,),) = scoped.execute("SELECT x FROM t")
        assert value == dt.datetime(2024, 1, 1, tzinfo=dt.UTC) and str(value.tzinfo) == "Asia/Tokyo"
        admin.execute(f"USE {db}")
        assert admin.execute("SELECT count() FROM t") == [(1,)]
        with pytest.raises(ServerException) as raised:
            make_client(database="no_such_db_xyz").execute("SELECT 1")
        assert raised.value.code == 81
    finally:
        admin.execute(f"DROP DATABASE {db}")


def test_abandoned_iteration_and_cancel(make_client: ClientFactory) -> None:
    client = make_client()
    rows = client.execute_iter("SELECT number FROM numbers(100000000)", settings={"max_block_size": 1000})
    assert next(iter(rows)) == (0,)
    client.cancel()  # Cancel packet; the server stops the query and ends the stream
    assert client.execute("SELECT 3") == [(3,)]

    other = make_client()
    iterator = iter(other.execute_iter("SELECT number FROM numbers(100000000)"))
    next(iterator)
    other.disconnect()  # hang up mid-stream: the server cancels the chdb query
    assert make_client().execute("SELECT 4") == [(4,)]


def test_ping(client: Client) -> None:
    client.execute("SELECT 1")
    assert client.connection.ping()


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base: Path = tmp_path_factory.mktemp("secured")
    server = start_server_process(data_dir=base / "data", user="app", password="s3cret", log_file=base / "server.log")
    yield server
    assert server.stop() == 0


def test_password_check(secured_server: ServerProcess) -> None:
    good = Client(**secured_server.client_kwargs())
    assert good.execute("SELECT currentUser() != ''") == [(1,)]
    good.disconnect()

    for user, password in (("app", "wrong"), ("other", "s3cret")):
        bad = Client(host=secured_server.host, port=secured_server.port, user=user, password=password)
        with pytest.raises(ServerException) as raised:
            bad.execute("SELECT 1")
        assert raised.value.code == 516
        assert "AUTHENTICATION_FAILED" in raised.value.message


def test_insert_errors_raised_while_writing_are_reported(client: Client, table_name: str) -> None:
    """chdb's streaming insert drops such rows silently; the server must report the error."""
    client.execute(f"CREATE TABLE {table_name} (a UInt32) ENGINE = MergeTree PARTITION BY a ORDER BY a")

    with pytest.raises(ServerException) as raised:
        client.execute(f"INSERT INTO {table_name} VALUES", [(i,) for i in range(200)])

    assert raised.value.code == 252  # TOO_MANY_PARTS (too many partitions for one INSERT block)
    assert client.execute(f"SELECT count() FROM {table_name}") == [(0,)]


def test_progress_reports_rows_read(client: Client) -> None:
    progress = client.execute_with_progress("SELECT count() FROM numbers(3000000)")

    reported = list(progress)

    assert progress.get_result() == [(3000000,)]
    assert reported and reported[-1][0] == 3000000  # cumulative rows read from storage
    assert client.last_query.progress.rows == 3000000


def test_insert_with_inline_json_data_round_trips_and_reports_errors(client: Client, table_name: str) -> None:
    client.execute(
        f"CREATE TABLE {table_name} (id UUID, ts DateTime64(3, 'UTC'), n Nullable(Int64), b Bool, s String)"
        " ENGINE = MergeTree ORDER BY id"
    )
    ident = uuid.UUID(int=12345)
    text = 'a "quoted" \\ line\nbreak é 😀 ; FORMAT Native'
    quoted = orjson.dumps(text).decode()
    data = f'[["{ident}", "{ident}"], [1700000000.123, 0.001], [null, -5], [true, false], [{quoted}, ""]]'
    client.execute(f"INSERT INTO {table_name} (id, ts, n, b, s) FORMAT JSONCompactColumns\n{data}")

    rows = client.execute(f"SELECT id, toUnixTimestamp64Milli(ts), n, b, s FROM {table_name} ORDER BY ts")
    assert rows == [(ident, 1, -5, False, ""), (ident, 1_700_000_000_123, None, True, text)]
    with pytest.raises(ServerException) as raised:
        client.execute(f'INSERT INTO {table_name} (id) FORMAT JSONCompactColumns\n[["not-a-uuid"]]')
    assert raised.value.code != 0
    assert client.execute(f"SELECT count() FROM {table_name}") == [(2,)]
