"""The chdb side of a session: one chdb connection, its settings, its errors.

Each client connection gets its own chdb connection on the shared data directory: chdb allows
several in one process, they run queries in parallel (chdb releases the GIL), and each keeps its
own current database and ``SET`` state, which is what a ClickHouse TCP session is.

Durability: an INSERT is acknowledged to the client only after chdb's INSERT statement returned,
i.e. after the MergeTree part was written and renamed into the table (the commit point). Such a
part survives ``kill -9`` of the server because the data is in the OS page cache and the part's
directory rename already happened; chdb reloads committed parts and drops temporary ones on the
next start (checked by ``tests/clickhouse_server/test_durability.py``). Surviving a power loss
as well needs the MergeTree settings ``fsync_after_insert = 1`` and ``fsync_part_directory = 1``
on the table, like on a real ClickHouse server.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from chdb import _chdb

from .encryption import storage_config
from .protocol import ErrorCode, ServerError, Setting

_CODE = re.compile(r"Code:\s*(\d+)\.\s*(.*)", re.DOTALL)
_VERSION_SUFFIX = re.compile(r"\s*\(version [0-9.]+(?: \(official build\))?\)\s*$")
_STREAMING_REFUSED = "Streaming query is not supported"

# chdb's connect() is not documented as thread-safe; opening connections is rare, so serialize it.
_CONNECT_LOCK = threading.Lock()


def server_error(exc: BaseException) -> ServerError:
    """Turn a chdb exception (``Code: 60. DB::Exception: ...``) into the same ClickHouse error."""
    if isinstance(exc, ServerError):
        return exc
    text = str(exc)
    match = _CODE.search(text)
    if not match:
        return ServerError.make(ErrorCode.LOGICAL_ERROR, text or type(exc).__name__)
    message = _VERSION_SUFFIX.sub("", match.group(2).strip())
    return ServerError(int(match.group(1)), message)


def quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(slots=True)
class _Applied:
    value: str
    restore: str  # SQL expression that restores the session value


class EngineConnection:
    """A chdb connection with the per-query behaviour of a ClickHouse TCP session."""

    def __init__(self, data_dir: str, config_file: str | None = None) -> None:
        target = data_dir
        if config_file is not None:
            if any(char in data_dir + config_file for char in "?&#"):
                raise ValueError("chdb's connection string cannot carry '?', '&' or '#' in these paths")
            target = f"file:{data_dir}?config-file={config_file}"
        with _CONNECT_LOCK:
            self._conn: Any = cast(Any, _chdb).connect(target)
        self._data_dir = data_dir
        self._config_file = config_file
        # Query-scoped settings currently applied with SET, restored lazily: clients usually send
        # the same settings with every query, so most queries need no extra statement.
        self._applied: dict[str, _Applied] = {}
        self.database = "default"
        # Second connection for DESCRIBE while a stream is open on the first (see describe_query).
        self._side: EngineConnection | None = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._side is not None:
            self._side.close()
            self._side = None

    def refresh_database(self) -> None:
        """Re-read the current database after a ``USE``."""
        self.database = str(self.execute_text("SELECT currentDatabase()")[0][0])

    # --- statements -----------------------------------------------------------------------

    def execute(self, sql: str) -> bytes:
        """Run a statement to completion; return its result as Native bytes (maybe empty)."""
        try:
            result = self._conn.query(sql, "Native")
        except RuntimeError as exc:
            raise server_error(exc) from None
        return bytes(result.bytes()) if result.size() else b""

    def execute_text(self, sql: str) -> list[list[Any]]:
        """Run a small metadata query and return its rows as Python values."""
        try:
            result = self._conn.query(sql, "JSONCompactEachRow")
        except RuntimeError as exc:
            raise server_error(exc) from None
        text = bytes(result.bytes()).decode("utf-8", errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stream(self, sql: str) -> Stream | None:
        """Start a streaming SELECT, or return None when chdb only runs it non-streaming."""
        try:
            handle = self._conn.send_query(sql, "Native")
        except RuntimeError as exc:
            if _STREAMING_REFUSED in str(exc):
                return None
            raise server_error(exc) from None
        return Stream(self._conn, handle)

    def begin_insert(self, head: str, settings: str, spool_dir: Path, data_format: str = "Native") -> Insert:
        return Insert(self, head, settings, spool_dir, data_format)

    # --- metadata -------------------------------------------------------------------------

    def insert_columns(self, table: str, columns: list[str] | None) -> list[tuple[str, str]]:
        """The sample block ClickHouse sends for ``INSERT INTO table [(columns)]``."""
        described = self.execute_text(f"DESCRIBE TABLE {table}")
        if columns is None:
            # Like ClickHouse: every column except MATERIALIZED and ALIAS ones.
            return [(row[0], row[1]) for row in described if row[2] not in ("MATERIALIZED", "ALIAS")]
        types = {row[0]: row[1] for row in described}
        missing = [name for name in columns if name not in types]
        if missing:
            raise ServerError.make(16, f"No such column {missing[0]} in table {table}")
        return [(name, types[name]) for name in columns]

    def describe_query(self, sql: str, *, while_streaming: bool = False) -> list[tuple[str, str]] | None:
        """Result columns of a SELECT; None if chdb cannot describe it.

        ``while_streaming`` runs the DESCRIBE on a second connection (opened on first use, set to
        the same current database), because any statement on this one ends its open stream.
        """
        target = self
        if while_streaming:
            if self._side is None:
                self._side = EngineConnection(self._data_dir, self._config_file)
            target = self._side
            if target.database != self.database:
                target.execute(f"USE {quote_identifier(self.database)}")
                target.database = self.database
        body = sql.strip().rstrip(";")
        try:
            rows = target.execute_text(f"DESCRIBE ({body})")
        except ServerError:
            return None
        return [(row[0], row[1]) for row in rows]

    # --- settings -------------------------------------------------------------------------

    def apply_settings(self, settings: dict[str, Setting]) -> None:
        """Make the session's settings equal its own plus ``settings`` for the next query.

        Unknown settings that are not marked important are ignored, as ClickHouse does.
        """
        wanted = {name: s.value for name, s in settings.items()}
        stale = {name: a.restore for name, a in self._applied.items() if name not in wanted}
        if stale:
            self.execute("SET " + ", ".join(f"{name} = {expr}" for name, expr in stale.items()))
            for name in stale:
                del self._applied[name]
        assignments: dict[str, str] = {}
        new = [name for name in wanted if name not in self._applied]
        restore = self._session_values(new)
        for name, value in wanted.items():
            if name in self._applied and self._applied[name].value == value:
                continue
            if name not in self._applied:
                if name not in restore:  # unknown to this engine
                    if settings[name].important:
                        raise ServerError.make(ErrorCode.UNKNOWN_SETTING, f"Unknown setting '{name}'")
                    continue
                self._applied[name] = _Applied(value, restore[name])
            else:
                self._applied[name].value = value
            assignments[name] = quote_literal(value)
        if assignments:
            try:
                self.execute("SET " + ", ".join(f"{name} = {expr}" for name, expr in assignments.items()))
            except ServerError:
                for name in assignments:  # unknown state: SET again next time, restore later
                    self._applied[name].value = "\0"
                raise

    def reset_settings(self) -> None:
        """Undo query-scoped settings, before a client's own ``SET`` changes the session."""
        if self._applied:
            self.execute("SET " + ", ".join(f"{name} = {a.restore}" for name, a in self._applied.items()))
            self._applied.clear()

    def _session_values(self, names: list[str]) -> dict[str, str]:
        if not names:
            return {}
        listed = ", ".join(quote_literal(name) for name in names)
        query = f"SELECT name, value, changed FROM system.settings WHERE name IN ({listed})"  # noqa: S608 - quoted literals
        rows = self.execute_text(query)
        return {row[0]: (quote_literal(row[1]) if row[2] else "DEFAULT") for row in rows}


class Stream:
    """A running streaming SELECT: one Native block per fetched chunk."""

    def __init__(self, conn: Any, handle: Any) -> None:
        self._conn = conn
        self._handle: Any = handle
        self.rows = 0  # result rows and bytes sent so far
        self.bytes = 0
        self.read_rows = 0  # rows and bytes chdb read from storage: what Progress reports
        self.read_bytes = 0

    def chunks(self) -> Iterator[bytes]:
        while self._handle is not None:
            try:
                result = self._conn.streaming_fetch_result(self._handle)
            except RuntimeError as exc:
                self._handle = None
                raise server_error(exc) from None
            if result is None or not result.size():
                self._handle = None
                return
            self.rows += result.rows_read()
            self.bytes += result.bytes_read()
            self.read_rows += result.storage_rows_read()
            self.read_bytes += result.storage_bytes_read()
            yield bytes(result.bytes())

    def cancel(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            with contextlib.suppress(RuntimeError):
                self._conn.streaming_cancel_query(handle)


class Insert:
    """An INSERT whose Native blocks are spooled to a file, then run as ``FROM INFILE``.

    Also used for inline data (``INSERT ... FORMAT JSONCompactColumns <data>`` in the query text):
    chdb reads the same bytes from a file faster than from the query, by about a third of the
    insert's CPU for 100k ``events`` rows (bench/bench_sink.py).

    Why not chdb's streaming ``send_insert``: in chdb 26.9 it swallows errors raised while the
    rows are written (CHECK constraints, too many partitions, a failing materialized view): the
    rows are silently dropped and ``insert_done`` still reports them written. An acknowledged
    insert must really be in the table, so the server takes the ordinary ``INSERT ... FROM
    INFILE ... FORMAT Native`` path, which reports every error. Spooling to a file keeps the
    server's memory flat however much a client inserts; the bytes stay in the page cache.
    """

    def __init__(
        self, engine: EngineConnection, head: str, settings: str, spool_dir: Path, data_format: str = "Native"
    ) -> None:
        self._engine = engine
        self._head = head
        self._settings = settings
        self._format = data_format  # a format name the SQL lexer read as one plain word
        spool_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="insert-", suffix=f".{data_format.lower()}", dir=spool_dir)
        self._path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self.blocks = 0

    def append(self, native_block: bytes) -> None:
        assert self._file is not None
        self._file.write(native_block)
        self.blocks += 1

    def finish(self) -> tuple[int, int]:
        """Run the INSERT; return (rows, bytes) written."""
        assert self._file is not None
        self._file.close()
        self._file = None
        try:
            if not self.blocks:
                return 0, 0
            sql = f"{self._head} FROM INFILE {quote_literal(str(self._path))} {self._settings} FORMAT {self._format}"
            try:
                result = self._engine._conn.query(sql, "Native")
            except RuntimeError as exc:
                raise server_error(exc) from None
            return int(result.rows_written()), int(result.bytes_written())
        finally:
            self._path.unlink(missing_ok=True)

    def cancel(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)


def engine_identity(conn: EngineConnection) -> tuple[str, tuple[int, int, int]]:
    """(server timezone, version) that the Hello packet announces."""
    rows = conn.execute_text("SELECT timezone(), version()")
    timezone, version = rows[0]
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    return timezone, (parts[0], parts[1], parts[2])


# The grants of chdb's one user, ``default``, for every connection of the process (chdb reads the
# config at its first connection): everything but the sources (FILE, URL, REMOTE, S3, HDFS, MYSQL,
# POSTGRES, ...: table functions, and engines like File or URL when read or written), BACKUP,
# SYSTEM SHUTDOWN and access management. TABLE ENGINE stays granted: without it chdb checks it
# before it looks the engine up, and an unknown engine answers 497 instead of UNKNOWN_STORAGE. The engine enforces these
# whatever the statement gate lets through; the gate covers what grants do not reach in
# clickhouse-local (INTO OUTFILE, FROM INFILE and the scalar ``file()`` pass any grant: measured).
_ACCESS_USERS = """<clickhouse>
  <users><default>
    <password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
    <profile>default</profile><quota>default</quota>
    <grants>
      <query>GRANT ALL ON *.*</query>
      <query>REVOKE SOURCES, BACKUP, SYSTEM SHUTDOWN, ACCESS MANAGEMENT ON *.*</query>
    </grants>
  </default></users>
  <profiles><default/></profiles>
  <quotas><default/></quotas>
</clickhouse>
"""


# ``system.part_log``: one row per part written, merged or removed, with the merge's CPU in its
# ProfileEvents. Off by default (the log is a table of its own that merges too); the stream
# benchmark turns it on to report insert and merge cost per table.
_PART_LOG = (
    "<part_log><database>system</database><table>part_log</table>"
    "<flush_interval_milliseconds>1000</flush_interval_milliseconds></part_log>"
)


def access_config_write(data_dir: str, *, encrypted: bool = False, part_log: bool = False) -> str:
    """Write the config that gives chdb's ``default`` user ``_ACCESS_USERS``; return its path.

    Beside the data dir's own folders (chdb ignores others), rewritten at every start so an edit
    of the code applies to existing data dirs. ``encrypted``: the default storage policy on an
    encrypted disk (``encryption.py``; the key stays in the environment). ``part_log``: keep
    ``system.part_log`` (``_PART_LOG``).
    """
    folder = Path(data_dir) / "server_access"
    folder.mkdir(parents=True, exist_ok=True)
    users = folder / "users.xml"
    users.write_text(_ACCESS_USERS)
    config = folder / "config.xml"
    storage = storage_config(data_dir) if encrypted else ""
    config.write_text(
        f"<clickhouse><user_directories><users_xml><path>{users}</path></users_xml></user_directories>"
        f"{storage}{_PART_LOG if part_log else ''}</clickhouse>\n"
    )
    return str(config)


def table_function_names(conn: EngineConnection) -> list[str]:
    """Every table function this engine knows: what the statement gate refuses unless allowed."""
    return [str(row[0]) for row in conn.execute_text("SELECT name FROM system.table_functions")]


def engine_names(conn: EngineConnection) -> list[str]:
    """Every table and database engine this engine knows (the gate refuses those not allowed)."""
    rows = conn.execute_text("SELECT name FROM system.table_engines UNION ALL SELECT name FROM system.database_engines")
    return [str(row[0]) for row in rows]


def default_database_detach_filesystem(conn: EngineConnection, data_dir: str) -> None:
    """Make ``default`` a plain Atomic database for this process.

    chdb (clickhouse-local) serves ``default`` as an Overlay of the Atomic database and a
    Filesystem one, so any name that is not a table there is read as a file relative to the
    working directory: ``SELECT * FROM Makefile``, ``FROM '/etc/passwd'``, ``default.`/etc/passwd```
    (measured in chdb 26.9). No statement check can tell a file name from a table name, so the
    server re-attaches the Atomic part alone, under its own UUID, before any client connects. The
    catalog is per process and the Overlay is rebuilt at each start, so this runs at each start;
    data and tables are unchanged.
    """
    rows = conn.execute_text("SELECT engine, toString(uuid) FROM system.databases WHERE name = 'default'")
    if not rows or rows[0][0] != "Overlay":
        return
    # The Overlay reports its Atomic part's UUID (the target of metadata/default once a table
    # exists); attaching that UUID keeps every table. Fail closed: a server that cannot remove
    # the overlay would serve files as tables.
    uuid = str(rows[0][1])
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", uuid) or not uuid.strip("0-"):
        raise RuntimeError(f"default database reports UUID {uuid!r}: cannot detach the Filesystem overlay")
    conn.execute("DETACH DATABASE default")
    conn.execute(f"ATTACH DATABASE default UUID {quote_literal(uuid)} ENGINE = Atomic")
