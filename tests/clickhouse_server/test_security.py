"""Authentication and the statement gate, through the real server process and clickhouse-driver.

Each forbidden statement is sent as an attacker would, and must come back as a ClickHouse error
with its code, on a session that stays usable; the application's own kinds of statement (DDL,
block and inline INSERTs, SELECTs, settings) must keep working next to them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from analytics_platform.clickhouse_server.testing import ServerProcess

from .conftest import ClientFactory

pytestmark = pytest.mark.clickhouse

ACCESS_DENIED = 497
SYNTAX_ERROR = 62
UNKNOWN_TABLE = 60
AUTHENTICATION_FAILED = 516
PATH_ACCESS_DENIED = 481


def _refused(client: Client, sql: str, **kwargs: object) -> ServerException:
    with pytest.raises(ServerException) as raised:
        client.execute(sql, **kwargs)
    return raised.value


# --- authentication ------------------------------------------------------------------------


def test_the_session_server_requires_its_password(clickhouse_server: ServerProcess) -> None:
    assert clickhouse_server.password  # started with a generated one, handed to every client
    assert Client(**clickhouse_server.client_kwargs()).execute("SELECT 1") == [(1,)]


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("default", ""),  # no password
        ("default", "wrong"),
        ("default", None),  # the right password but for another user (below)
        ("default", "PREFIX"),  # a prefix of the right one
    ],
)
def test_a_wrong_or_missing_password_is_refused_with_516(
    clickhouse_server: ServerProcess, user: str, password: str | None
) -> None:
    real = clickhouse_server.password
    assert real is not None
    if password is None:
        user, password = "other", real
    elif password == "PREFIX":
        password = real[:-1]
    client = Client(host=clickhouse_server.host, port=clickhouse_server.port, user=user, password=password)
    error = _refused(client, "SELECT 1")
    assert error.code == AUTHENTICATION_FAILED
    assert "AUTHENTICATION_FAILED" in error.message
    client.disconnect()


# --- the statement gate --------------------------------------------------------------------


@pytest.fixture()
def victim(tmp_path: Path) -> Path:
    """A file the server process can read, and a path it must never write."""
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    return tmp_path


FORBIDDEN = [
    # table functions that read paths or open connections, in every place a query can hold one
    ("SELECT * FROM file('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("select * from FILE('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM file/**/('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM file -- comment\n ('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM `file`('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM \"file\"('{secret}', 'LineAsString')", ACCESS_DENIED),
    (r"SELECT * FROM `\x66ile`('{secret}', 'LineAsString')", ACCESS_DENIED),  # chdb decodes the escape
    (r"SELECT * FROM `fi\le`('{secret}', 'LineAsString')", ACCESS_DENIED),
    (r"CREATE TABLE {table}_f (x String) ENGINE = `\x46ile`(TSV, '{secret}')", ACCESS_DENIED),
    ("SELECT file('{secret}')", ACCESS_DENIED),  # the scalar function of the same name
    # a heredoc holding a quote: a lexer without heredocs would read the rest as a string
    ("SELECT $$'$$, file('{secret}')", ACCESS_DENIED),
    ("SELECT $tag$'$tag$, file('{secret}')", ACCESS_DENIED),
    ("SELECT 1 # comment\n, file('{secret}')", ACCESS_DENIED),
    ("SELECT * FROM (SELECT * FROM file('{secret}', 'LineAsString'))", ACCESS_DENIED),
    ("WITH s AS (SELECT * FROM file('{secret}', 'LineAsString')) SELECT * FROM s", ACCESS_DENIED),
    ("SELECT * FROM numbers(1) AS n JOIN file('{secret}', 'LineAsString') AS f ON 1", ACCESS_DENIED),
    ("SELECT 1 WHERE 'x' IN (SELECT * FROM file('{secret}', 'LineAsString'))", ACCESS_DENIED),
    ("DESCRIBE file('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("EXPLAIN SELECT * FROM file('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM url('http://127.0.0.1:1/x', 'LineAsString')", ACCESS_DENIED),
    ("SELECT * FROM remote('127.0.0.1:1', system.one)", ACCESS_DENIED),
    ("SELECT * FROM remoteSecure('127.0.0.1:1', system.one)", ACCESS_DENIED),
    ("SELECT * FROM clusterAllReplicas('default', system.one)", ACCESS_DENIED),
    ("SELECT * FROM s3('http://127.0.0.1:1/bucket/x.csv', 'CSV')", ACCESS_DENIED),
    ("SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'CSV')", ACCESS_DENIED),
    ("SELECT * FROM mysql('127.0.0.1:1', 'db', 't', 'u', 'p')", ACCESS_DENIED),
    ("SELECT * FROM postgresql('127.0.0.1:1', 'db', 't', 'u', 'p')", ACCESS_DENIED),
    ("SELECT * FROM sqlite('{secret}', 't')", ACCESS_DENIED),
    ("SELECT * FROM executable('cat', 'LineAsString', 'x String')", ACCESS_DENIED),
    ("SELECT * FROM python('x')", ACCESS_DENIED),  # chdb: objects of the server's own interpreter
    ("SELECT * FROM iceberg('http://127.0.0.1:1/x')", ACCESS_DENIED),
    ("SELECT * FROM filesystem('{dir}')", ACCESS_DENIED),
    # clauses that make the engine read or write a path
    ("SELECT 1 INTO OUTFILE '{dir}/out.tsv'", ACCESS_DENIED),
    ("SELECT 1 INTO   /* x */ OUTFILE '{dir}/out.tsv' TRUNCATE", ACCESS_DENIED),
    ("INSERT INTO {table} FROM INFILE '{secret}' FORMAT LineAsString", ACCESS_DENIED),
    ("INSERT INTO FUNCTION file('{dir}/out.tsv', 'TSV', 'x String') VALUES ('pwned')", ACCESS_DENIED),
    ("INSERT INTO {table} VALUES (file('{secret}'))", ACCESS_DENIED),
    ("INSERT INTO {table} SELECT * FROM file('{secret}', 'LineAsString')", ACCESS_DENIED),
    # engines that touch paths or the network
    ("CREATE TABLE {table}_f (x String) ENGINE = File(TSV, '{secret}')", ACCESS_DENIED),
    ("CREATE TABLE {table}_f (x String) ENGINE=file(TSV, '{secret}')", ACCESS_DENIED),
    ("CREATE TABLE {table}_f (x String) ENGINE URL('http://127.0.0.1:1/x', CSV)", ACCESS_DENIED),
    ("CREATE TABLE {table}_f (x String) ENGINE = S3('http://127.0.0.1:1/b/x.csv', CSV)", ACCESS_DENIED),
    ("CREATE TABLE {table}_f (x String) ENGINE = Executable('cat', 'LineAsString')", ACCESS_DENIED),
    ("CREATE TABLE {table}_f (x String) ENGINE = MySQL('127.0.0.1:1', 'db', 't', 'u', 'p')", ACCESS_DENIED),
    ("CREATE TABLE {table}_f AS file('{secret}', 'LineAsString')", ACCESS_DENIED),
    ("CREATE DATABASE d_{table} ENGINE = Filesystem('{dir}')", ACCESS_DENIED),
    (
        "CREATE TABLE {table}_f (x String) ENGINE = MergeTree ORDER BY x"
        " SETTINGS disk = disk(type = local, path = '{dir}/disk/')",
        ACCESS_DENIED,
    ),
    (
        "CREATE DICTIONARY {table}_d (x UInt64) PRIMARY KEY x SOURCE(FILE(path '{secret}' format 'TSV'))"
        " LAYOUT(FLAT()) LIFETIME(0)",
        ACCESS_DENIED,
    ),
    (
        "CREATE DICTIONARY {table}_d (x UInt64) PRIMARY KEY x SOURCE(HTTP(url 'http://127.0.0.1:1/' format 'TSV'))"
        " LAYOUT(FLAT()) LIFETIME(0)",
        ACCESS_DENIED,
    ),
    # chdb's own check refuses this one (measured: PATH_ACCESS_DENIED, "must be inside" user_files)
    ("ATTACH TABLE {table}_a FROM '{dir}' (x String) ENGINE = MergeTree ORDER BY x", PATH_ACCESS_DENIED),
    # statements that stop the server or write archives anywhere
    ("SYSTEM SHUTDOWN", ACCESS_DENIED),
    ("system kill", ACCESS_DENIED),
    ("SYSTEM RELOAD CONFIG", ACCESS_DENIED),
    ("SYSTEM DROP MARK CACHE", ACCESS_DENIED),
    ("BACKUP TABLE {table} TO File('{dir}/backup')", ACCESS_DENIED),
    ("RESTORE TABLE {table} FROM File('{dir}/backup')", ACCESS_DENIED),
    ("GRANT ALL ON *.* TO default", ACCESS_DENIED),
    ("CREATE USER u_{table} IDENTIFIED BY 'x'", ACCESS_DENIED),
    # settings that name paths or URLs
    ("SET format_schema = '{secret}:Message'", ACCESS_DENIED),
    ("SELECT 1 SETTINGS output_format_schema = '{dir}/schema.capnp'", ACCESS_DENIED),
    ("SET format_avro_schema_registry_url = 'http://127.0.0.1:1'", ACCESS_DENIED),
    # several statements in one query: ClickHouse's own TCP handler refuses them
    ("SELECT 1; SELECT * FROM numbers(1)", SYNTAX_ERROR),
    ("SELECT 1;\n\nDROP TABLE {table}", SYNTAX_ERROR),
    # an INSERT ... SELECT ... FORMAT is not followed by data: chdb runs what comes after ';'
    (
        "INSERT INTO {table} SELECT 'x' FORMAT TSV ;"
        " INSERT INTO {table} SELECT * FROM file('{secret}', 'LineAsString')",
        SYNTAX_ERROR,
    ),
]


@pytest.fixture()
def text_table(client: Client) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    client.execute(f"CREATE TABLE {name} (line String) ENGINE = MergeTree ORDER BY line")
    yield name
    client.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize(("template", "code"), FORBIDDEN, ids=[t for t, _ in FORBIDDEN])
def test_forbidden_statements_are_refused_and_the_session_stays_usable(
    client: Client, text_table: str, victim: Path, template: str, code: int
) -> None:
    sql = template.format(secret=victim / "secret.txt", dir=victim, table=text_table)
    error = _refused(client, sql)
    assert error.code == code, error.message
    # Nothing reached the engine: no file written, no row read from the secret.
    assert not (victim / "out.tsv").exists() and not (victim / "backup").exists()
    assert not (victim / "disk").exists()
    assert client.execute(f"SELECT count() FROM {text_table}") == [(0,)]
    assert client.execute("SELECT 1") == [(1,)]


def test_settings_sent_with_a_query_are_checked_too(client: Client, victim: Path) -> None:
    error = _refused(client, "SELECT 1", settings={"format_schema": f"{victim}/secret.txt:Message"})
    assert error.code == ACCESS_DENIED
    assert client.execute("SELECT 1", settings={"max_threads": 1}) == [(1,)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM Makefile",  # a file in the server's working directory, read as a table
        "SELECT * FROM `pyproject.toml`",
        "SELECT * FROM default.`/etc/passwd`",
        "SELECT * FROM `../../../../../../etc/passwd`",
        "SELECT * FROM '/etc/passwd'",  # clickhouse-local's file-as-table syntax
        'SELECT * FROM "/etc/passwd"',
    ],
)
def test_the_default_database_no_longer_reads_unknown_names_as_files(client: Client, sql: str) -> None:
    # chdb serves `default` as an Overlay with a Filesystem database; the server detaches it.
    assert (Path.cwd() / "Makefile").exists()  # the test runs where the server runs (the repo)
    error = _refused(client, sql)
    assert error.code == UNKNOWN_TABLE, error.message


def test_the_applications_statements_still_run(make_client: ClientFactory, text_table: str) -> None:
    client = make_client(settings={"max_threads": 2})
    name = f"app_{uuid.uuid4().hex[:10]}"
    try:
        # DDL as the migrations write it: engines, settings, a materialized view, columns whose
        # names are those of forbidden functions (only a call is refused).
        client.execute(
            f"CREATE TABLE {name} (file String, url String, n UInt64) ENGINE = ReplacingMergeTree"
            " ORDER BY (file, n) SETTINGS index_granularity = 8192"
        )
        client.execute(f"ALTER TABLE {name} MODIFY SETTING non_replicated_deduplication_window = 100")
        client.execute(
            f"CREATE MATERIALIZED VIEW {name}_mv ENGINE = SummingMergeTree ORDER BY file"
            f" AS SELECT file, sum(n) AS n FROM {name} GROUP BY file"
        )
        # Block INSERT (the sink's path), inline INSERT (spooled and run FROM INFILE inside).
        client.execute(f"INSERT INTO {name} (file, url, n) VALUES", [("a", "http://x", 1), ("b", "", 2)])
        client.execute(f'INSERT INTO {name} FORMAT JSONEachRow {{"file": "c", "url": "file(", "n": 3}}')
        client.execute(f"INSERT INTO {name} SELECT 'd', '', number FROM numbers(2)")
        assert client.execute(f"SELECT file, url, n FROM {name} FINAL ORDER BY file, n") == [
            ("a", "http://x", 1),
            ("b", "", 2),
            ("c", "file(", 3),
            ("d", "", 0),
            ("d", "", 1),
        ]
        assert client.execute(f"SELECT sum(n) FROM {name}_mv") == [(7,)]
        # Metric-style reads, allowed table functions, system tables, SYSTEM merges control.
        assert client.execute("SELECT count() FROM numbers(10)") == [(10,)]
        assert client.execute("SELECT count() FROM zeros(3)") == [(3,)]
        assert client.execute("SELECT * FROM values('x UInt8', 1, 2)") == [(1,), (2,)]
        assert len(client.execute("SELECT * FROM generateRandom('x UInt8', 1) LIMIT 4")) == 4
        assert client.execute(f"SELECT engine FROM system.tables WHERE name = '{name}'") == [("ReplacingMergeTree",)]
        client.execute(f"SYSTEM STOP MERGES {name}")
        client.execute(f"SYSTEM START MERGES {name}")
        client.execute(f"OPTIMIZE TABLE {name} FINAL")
        client.execute("SET max_threads = 1")
        assert client.execute("SELECT 1;") == [(1,)]  # one statement with its ';'
    finally:
        client.execute(f"DROP TABLE IF EXISTS {name}_mv")
        client.execute(f"DROP TABLE IF EXISTS {name}")


_ENGINE_PROBE = """
import json, sys
from analytics_platform.clickhouse_server.engine import EngineConnection, access_config_write
from analytics_platform.clickhouse_server.engine import default_database_detach_filesystem
data_dir, secret, spool = sys.argv[1:4]
conn = EngineConnection(data_dir, access_config_write(data_dir))
default_database_detach_filesystem(conn, data_dir)
out = {}
for sql in [
    f"SELECT * FROM file('{secret}', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT * FROM remote('127.0.0.1:1', system.one)",
    "SYSTEM SHUTDOWN",
    "CREATE TABLE t (line String) ENGINE = MergeTree ORDER BY line",
    "BACKUP TABLE t TO File('backup')",
    "CREATE USER someone",
    f"INSERT INTO t FROM INFILE '{spool}' FORMAT LineAsString",
    "SELECT count() FROM t",
]:
    try:
        out[sql] = ["ok", conn.execute_text(sql)]
    except Exception as exc:
        out[sql] = ["error", getattr(exc, "code", None)]
print(json.dumps(out))
"""


def test_the_engine_itself_denies_sources_behind_the_gate(tmp_path: Path, victim: Path) -> None:
    """Second layer, without the gate: chdb's user gets no SOURCES, BACKUP or SYSTEM SHUTDOWN grant.

    In a process of its own (chdb reads its config once per process), as the server does.
    """
    import json
    import subprocess
    import sys

    spool = tmp_path / "spool.txt"
    spool.write_text("one\ntwo\n")
    result = subprocess.run(
        [sys.executable, "-c", _ENGINE_PROBE, str(tmp_path / "data"), str(victim / "secret.txt"), str(spool)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    refused = [sql for sql, (status, _) in out.items() if status == "error"]
    assert [out[sql][1] for sql in refused] == [ACCESS_DENIED] * 6, out
    assert refused[:4] == list(out)[:4] and "CREATE USER someone" in refused and any("BACKUP" in s for s in refused)
    # What the server itself does keeps working: its insert spool is read FROM INFILE.
    assert out["SELECT count() FROM t"] == ["ok", [[2]]], out


def test_the_default_database_stays_plain_and_keeps_its_tables_across_restarts(tmp_path: Path) -> None:
    """Fresh data dir, restart without a table in `default`, then with one: each start detaches the
    Filesystem overlay again (chdb rebuilds it per process) and the table survives."""
    from analytics_platform.clickhouse_server.testing import start_server_process

    data_dir = tmp_path / "data"
    for start in range(3):
        with start_server_process(data_dir=data_dir, log_file=tmp_path / "server.log") as server:
            client = Client(**server.client_kwargs())
            assert client.execute("SELECT engine FROM system.databases WHERE name = 'default'") == [("Atomic",)]
            assert _refused(client, "SELECT * FROM Makefile").code == UNKNOWN_TABLE
            if start == 1:
                client.execute("CREATE TABLE kept (x UInt8) ENGINE = MergeTree ORDER BY x")
                client.execute("INSERT INTO kept VALUES", [(7,)])
            if start == 2:
                assert client.execute("SELECT x FROM kept") == [(7,)]
            client.disconnect()
