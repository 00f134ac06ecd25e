"""Just enough SQL lexing to route a query, never to rewrite it.

Over the native protocol the server, not the client, decides whether an ``INSERT`` waits for data
blocks: ClickHouse does it in ``InterpreterInsertQuery`` (a "pushing" pipeline when the query has
no ``SELECT`` and no inline data). chdb offers no such hook, so the server finds it out here: the
target table and column list (for the sample block), and the pieces of the statement to give
chdb once the data has arrived. Everything else chdb parses itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from .protocol import ServerError

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>--[^\n]*|\#[\ !][^\n]*|/\*.*?\*/)
    | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
    | (?P<string>'(?:[^'\\]|\\.|'')*')
    | (?P<heredoc>\$(?P<tag>[A-Za-z0-9_]*)\$.*?\$(?P=tag)\$)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<number>[0-9][0-9A-Za-z_.]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else self.text

    @property
    def identifier(self) -> str:
        """The name a word or quoted identifier stands for."""
        if self.kind == "quoted":
            quote = self.text[0]
            return self.text[1:-1].replace(quote * 2, quote).replace("\\" + quote, quote)
        return self.text


def tokens(sql: str, limit: int | None = None) -> list[Token]:
    """Significant tokens of ``sql`` (no whitespace or comments), at most ``limit`` of them."""
    return list(islice(iter_tokens(sql), limit))


def iter_tokens(sql: str) -> Iterator[Token]:
    """Significant tokens of ``sql``, lexed only as far as they are consumed.

    Lazy because an INSERT may carry megabytes of inline data after ``FORMAT``: the router needs
    the few tokens before it, and lexing the data in Python would cost seconds.
    """
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind not in ("ws", "comment"):
            yield Token(kind, match.group(), match.start(), match.end())


def first_keyword(sql: str) -> str:
    """The statement's first keyword in upper case, or ``(`` for a parenthesized SELECT."""
    head = tokens(sql, limit=1)
    return head[0].upper if head else ""


@dataclass(frozen=True, slots=True)
class InsertTarget:
    """An ``INSERT`` whose rows arrive as Data packets from the client."""

    table: str  # as written, e.g. ``db.`t` `` (safe to paste back into SQL)
    columns: list[str] | None  # the explicit column list, None for "all insertable columns"
    head: str  # ``INSERT INTO table [(columns)]`` as written
    settings: str  # a ``SETTINGS ...`` clause of the INSERT, or ""


_DATA_KEYWORDS = {"VALUES", "FORMAT"}
_QUERY_KEYWORDS = {"SELECT", "WITH", "(", "FROM"}


def insert_target(sql: str) -> InsertTarget | None:
    """Return the target if ``sql`` is an INSERT expecting client data blocks, else None.

    None covers ``INSERT ... SELECT``, inline ``VALUES (...)`` or ``FORMAT x <data>``, and
    ``INSERT INTO FUNCTION``: chdb runs those as ordinary statements.
    """
    parts = _insert_parts(sql)
    if parts is None or parts.data_start is not None:
        return None
    return parts.target


@dataclass(frozen=True, slots=True)
class InlineInsert:
    """``INSERT INTO table [(columns)] [SETTINGS ...] FORMAT name <data>`` split at its data."""

    target: InsertTarget
    format: str  # the format name as written (a plain word)
    data_start: int  # index in the query text where the data begins, as ClickHouse finds it


# Formats whose parsers ignore whitespace around values: for these, where exactly the data starts
# (ClickHouse skips blanks and one newline after the format name) cannot change what is read.
INLINE_SPOOL_FORMATS = frozenset({"JSONEachRow", "JSONCompactEachRow", "JSONColumns", "JSONCompactColumns"})


def inline_insert(sql: str) -> InlineInsert | None:
    """Split an INSERT carrying inline data after ``FORMAT name`` (one of ``INLINE_SPOOL_FORMATS``).

    The server then spools the data to a file and runs ``... FROM INFILE ... FORMAT name``, which
    chdb reads faster than the same bytes inside the query text.
    """
    parts = _insert_parts(sql)
    if parts is None or parts.data_start is None or parts.format not in INLINE_SPOOL_FORMATS:
        return None
    start = parts.data_start
    while start < len(sql) and sql[start] in " \t\f":
        start += 1
    if sql.startswith("\r", start):
        start += 1
    if sql.startswith("\n", start):
        start += 1
    return InlineInsert(target=parts.target, format=parts.format, data_start=start)


@dataclass(frozen=True, slots=True)
class _InsertParts:
    target: InsertTarget
    format: str | None  # the FORMAT name, None for VALUES or no data clause
    data_start: int | None  # where inline data starts (right after the format name), None if none


def _insert_parts(sql: str) -> _InsertParts | None:
    toks = _Tokens(sql)
    if not toks.has(2) or toks[0].upper != "INSERT" or toks[1].upper != "INTO":
        return None
    i = 2
    if toks[i].upper == "TABLE":
        i += 1
    if not toks.has(i) or toks[i].upper == "FUNCTION":
        return None
    table_start = toks[i].start
    i += 1
    while toks.has(i + 1) and toks[i].text == "." and toks[i + 1].kind in ("word", "quoted"):
        i += 2
    table = sql[table_start : toks[i - 1].end]
    columns: list[str] | None = None
    if toks.has(i) and toks[i].text == "(":
        if toks.has(i + 1) and toks[i + 1].upper in _QUERY_KEYWORDS:
            return None  # INSERT INTO t (SELECT ...)
        columns, i = _column_list(toks, i + 1)
        if columns is None:
            return None
    head = sql[: toks[i - 1].end]
    clause_start = toks[i].start if toks.has(i) else len(sql)
    statement_end = len(sql)
    format_name: str | None = None
    data_start: int | None = None
    while toks.has(i):
        word = toks[i].upper
        if word in _QUERY_KEYWORDS:
            return None
        if word in _DATA_KEYWORDS:
            statement_end = toks[i].start
            data_from = i + 1 if word == "VALUES" else i + 2
            if word == "FORMAT" and toks.has(i + 1) and toks[i + 1].kind == "word":
                format_name = toks[i + 1].text
            if toks.has(data_from) and (toks.has(data_from + 1) or toks[data_from].text != ";"):
                if format_name is None:
                    return None  # VALUES (...): chdb parses it from the query text
                data_start = toks[i + 1].end
            break
        i += 1
    settings = sql[clause_start:statement_end].strip()
    if settings and not settings.upper().startswith("SETTINGS"):
        return None  # something this lexer does not understand: let chdb report it
    target = InsertTarget(table=table, columns=columns, head=head, settings=settings)
    return _InsertParts(target=target, format=format_name, data_start=data_start)


class _Tokens:
    """``iter_tokens`` with indexing: lexes up to the highest index asked for, never further."""

    def __init__(self, sql: str) -> None:
        self._source = iter_tokens(sql)
        self._lexed: list[Token] = []

    def has(self, index: int) -> bool:
        while len(self._lexed) <= index:
            token = next(self._source, None)
            if token is None:
                return False
            self._lexed.append(token)
        return True

    def __getitem__(self, index: int) -> Token:
        if not self.has(index):
            raise IndexError(index)
        return self._lexed[index]


def _column_list(toks: _Tokens, i: int) -> tuple[list[str] | None, int]:
    """Parse ``a, b.c, `d`)`` starting after the opening parenthesis."""
    columns: list[str] = []
    current: list[str] = []
    while toks.has(i):
        tok = toks[i]
        if tok.text in (",", ")"):
            if not current:
                return None, i
            columns.append(".".join(current))
            current = []
            if tok.text == ")":
                return columns, i + 1
        elif tok.kind in ("word", "quoted"):
            current.append(tok.identifier)
        elif tok.text != ".":
            return None, i  # e.g. ``*`` or COLUMNS('re'): let chdb decide the sample block
        i += 1
    return None, i


# --- the statement gate -------------------------------------------------------------------------
#
# chdb runs every statement as its built-in ``default`` user, who holds every grant (measured:
# ``SHOW GRANTS`` lists SOURCES, FILE, URL, REMOTE, SYSTEM SHUTDOWN, BACKUP...), and clickhouse-local
# semantics apply: ``file()`` reads any absolute path, ``INTO OUTFILE`` writes one. So the server
# checks each client statement before chdb sees it. The checks are allowlists where the language
# allows one (statement kinds, table functions, table and database engines, SYSTEM commands):
# something new in a later chdb is refused until it is added here on purpose.

ACCESS_DENIED = 497
SYNTAX_ERROR = 62

# Statement kinds a client may send (first keyword). BACKUP/RESTORE (write and read archives at any
# path or URL), GRANT/REVOKE/CREATE USER (chdb's default user has no grant option anyway), and
# anything not listed are refused: the known ones with ACCESS_DENIED, any other first word as the
# syntax error it most likely is (``SELEC 1``), so a typo still reads like ClickHouse's answer.
ALLOWED_STATEMENTS = frozenset(
    {
        "SELECT", "WITH", "(", "INSERT", "CREATE", "ALTER", "DROP", "TRUNCATE", "RENAME", "EXCHANGE",
        "OPTIMIZE", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS", "USE", "SET", "KILL", "CHECK",
        "DETACH", "ATTACH", "UNDROP", "DELETE", "UPDATE", "SYSTEM", "REPLACE",
    }
)  # fmt: skip

# Table functions that read only the server's own tables or generate rows. Every other name in the
# engine's system.table_functions (file, url, remote, s3, hdfs, mysql, executable, python, ... 94
# in chdb 26.9) is refused wherever it is called: FROM, JOIN, IN (SELECT ...), a CTE, INSERT INTO
# FUNCTION, DESCRIBE, EXPLAIN, or as a scalar function of the same name (``file(path)`` reads a
# file as a String).
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom", "generateseries", "generate_series",
        "values", "sqlstandardvalues", "view", "viewifpermitted", "viewexplain", "merge", "null", "loop",
        "format", "input", "primes",
    }
)  # fmt: skip

# Engines a CREATE/ATTACH may name (table and database engines, compared case-insensitively):
# storage inside the data directory, views, and Distributed/Replicated for cluster mode (their
# servers and ZooKeeper come from the operator's config file, not from the statement). File, URL,
# S3, HDFS, MySQL, PostgreSQL, Executable, Kafka, Filesystem and the rest are refused.
ALLOWED_ENGINES = frozenset(
    name.lower()
    for name in (
        "MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree", "CollapsingMergeTree",
        "VersionedCollapsingMergeTree", "CoalescingMergeTree", "GraphiteMergeTree",
        "ReplicatedMergeTree", "ReplicatedReplacingMergeTree", "ReplicatedSummingMergeTree",
        "ReplicatedAggregatingMergeTree", "ReplicatedCollapsingMergeTree",
        "ReplicatedVersionedCollapsingMergeTree", "ReplicatedCoalescingMergeTree", "ReplicatedGraphiteMergeTree",
        "Memory", "Null", "Set", "Join", "Buffer", "Log", "TinyLog", "StripeLog", "EmbeddedRocksDB",
        "MaterializedView", "View", "Merge", "Distributed", "Dictionary", "GenerateRandom",
        "Atomic", "Replicated", "Ordinary",
    )
)  # fmt: skip

_LOWER_WORD = re.compile(r"[a-z_][a-z0-9_]*")

# Statements checked token by token whatever words they hold: their dangers are in clauses (ENGINE,
# SOURCE) rather than in names a quick search finds.
_CHECKED_IN_FULL = frozenset({"CREATE", "ATTACH", "REPLACE"})

# An INSERT takes the fast path (with ``function`` as one more suspect word, for INSERT INTO
# FUNCTION) only when short: inline data can be megabytes, and the token scan stops at it.
_FAST_INSERT_CHARS = 16384

_REFUSED_STATEMENTS = frozenset(
    {"BACKUP", "RESTORE", "GRANT", "REVOKE", "MOVE", "WATCH", "BEGIN", "COMMIT", "ROLLBACK"}
)

# SYSTEM commands by their first word: merges/replication control and log flushing. SHUTDOWN, KILL,
# RELOAD, DROP (caches, replicas), RESTART, the dictionary and model commands are refused.
ALLOWED_SYSTEM_COMMANDS = frozenset({"START", "STOP", "SYNC", "FLUSH", "WAIT"})

# Clauses that make chdb itself read or write a path: clickhouse-local runs them client-side, so
# no grant applies to them (measured: ``INTO OUTFILE`` works even for a user without FILE).
_FORBIDDEN_WORDS = {"OUTFILE": "INTO OUTFILE", "INFILE": "FROM INFILE"}


# Scalar functions that reach outside the data directory: ``file(path)`` (a file as a String),
# ``disk(type=local, path=...)`` (a dynamic disk in a table's SETTINGS, at any path or URL) and
# ``catboostEvaluate(model_path, ...)``.
DENIED_FUNCTIONS = frozenset({"file", "disk", "catboostevaluate"})

# Query settings that name a path or URL (read or written by formats and engines), or let dynamic
# disks read the environment. Refused in SET, in SETTINGS clauses and in the Query packet.
DENIED_SETTINGS = frozenset(
    {
        "format_schema", "format_schema_source", "output_format_schema", "format_template_resultset",
        "format_template_row", "input_format_record_errors_file_path", "format_avro_schema_registry_url",
        "url_base", "rename_files_after_processing", "dynamic_disk_allow_from_env", "dynamic_disk_allow_from_zk",
        "dynamic_disk_allow_include",
    }
)  # fmt: skip


def _denied(what: str) -> ServerError:
    return ServerError(ACCESS_DENIED, f"DB::Exception: {what} is not allowed on this server. (ACCESS_DENIED)")


class StatementGate:
    """Refuses client statements that read or write paths, or open connections, from the engine.

    ``table_functions`` and ``engines`` are the engine's own lists (``system.table_functions``,
    ``system.table_engines`` and ``system.database_engines``): what they name and the allowlists
    do not is refused, so what a later chdb adds is refused too. A name the engine does not know
    goes on to chdb, which answers it with its own error (UNKNOWN_STORAGE, UNKNOWN_FUNCTION).
    """

    def __init__(self, table_functions: Iterable[str], engines: Iterable[str]) -> None:
        known = frozenset(name.lower() for name in table_functions)
        self.denied_functions = (known - ALLOWED_TABLE_FUNCTIONS) | DENIED_FUNCTIONS
        self.denied_engines = frozenset(name.lower() for name in engines) - ALLOWED_ENGINES
        self._suspects = self.denied_functions | DENIED_SETTINGS | {word.lower() for word in _FORBIDDEN_WORDS}
        self._insert_suspects = self._suspects | {"function"}

    @staticmethod
    def setting_refusal(names: Iterable[str]) -> ServerError | None:
        """The error for settings sent with a query (the Query packet's list), or None."""
        for name in names:
            if name.lower() in DENIED_SETTINGS:
                return _denied(f"Setting {name}")
        return None

    def refusal(self, sql: str) -> ServerError | None:
        """The error to answer ``sql`` with, or None when it may run."""
        head = tokens(sql, limit=2)
        if not head:
            return None
        first = head[0].upper
        if first not in ALLOWED_STATEMENTS:
            if first in _REFUSED_STATEMENTS:
                return _denied(f"{head[0].text} statement")
            return ServerError(
                SYNTAX_ERROR, f"DB::Exception: Syntax error: unknown statement {head[0].text[:64]!r}. (SYNTAX_ERROR)"
            )
        if first == "SYSTEM" and (len(head) < 2 or head[1].upper not in ALLOWED_SYSTEM_COMMANDS):
            return _denied(f"SYSTEM {head[1].text if len(head) > 1 else ''}".strip())
        if first == "INSERT":
            if len(sql) <= _FAST_INSERT_CHARS and not self._suspicious(sql, self._insert_suspects):
                return None
        elif first not in _CHECKED_IN_FULL and not self._suspicious(sql, self._suspects):
            return None
        return self._scan(sql, first)

    @staticmethod
    def _suspicious(sql: str, suspects: frozenset[str]) -> bool:
        """Fast path for most queries: every refusal of ``_scan`` needs one of the suspect words,
        a ';' or a backslash somewhere in the text (one inside a string or a comment only costs
        the full scan). Any run of letters counts as a word here, a superset of the lexer's."""
        if ";" in sql or "\\" in sql:
            return True
        return not suspects.isdisjoint(_LOWER_WORD.findall(sql.lower()))

    def _scan(self, sql: str, first: str) -> ServerError | None:
        lexed: list[tuple[str, str]] = []
        source = ((m.lastgroup or "other", m.group()) for m in _TOKEN.finditer(sql))
        source = ((kind, text) for kind, text in source if kind not in ("ws", "comment"))

        def at(index: int) -> tuple[str, str]:
            """Token ``index`` as (kind, text); ("", "") past the end. Lexes only as far as asked."""
            while len(lexed) <= index:
                token = next(source, None)
                if token is None:
                    return ("", "")
                lexed.append(token)
            return lexed[index]

        creates = first in ("CREATE", "ATTACH", "REPLACE")
        inserts = first == "INSERT"
        depth = 0
        engine_clauses = True  # CREATE ... ENGINE x, until the statement's own SELECT
        # In INSERT ... SELECT ... FORMAT x the format is the SELECT's and chdb goes on to run what
        # follows a ';' (measured): only an INSERT without a query has data after FORMAT.
        selects = False
        i = 0
        while True:
            kind, text = at(i)
            if not kind:
                return None
            following = at(i + 1)[1]
            word = text.upper() if kind == "word" else ""
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            elif text == ";":
                if at(i + 1)[0]:
                    return ServerError(SYNTAX_ERROR, "DB::Exception: Multi-statements are not allowed. (SYNTAX_ERROR)")
                return None
            elif kind == "quoted" and "\\" in text:
                # ClickHouse decodes escapes in quoted names (`\x66ile` is `file`, measured):
                # refusing them is simpler than decoding them exactly as it does.
                return _denied("An escape sequence in a quoted identifier")
            elif word in _FORBIDDEN_WORDS:
                return _denied(_FORBIDDEN_WORDS[word])
            elif following == "=" and word and text.lower() in DENIED_SETTINGS:
                return _denied(f"Setting {text}")
            elif following == "(" and kind in ("word", "quoted"):
                name = Token(kind, text, 0, 0).identifier
                if name.lower() in self.denied_functions:
                    return _denied(f"Function {name}")
                if creates and word == "SOURCE":
                    return _denied("Dictionary SOURCE")  # FILE, HTTP, EXECUTABLE, a remote CLICKHOUSE...
            if word in ("SELECT", "WITH"):
                selects = True
                if creates and depth == 0:
                    engine_clauses = False
            elif inserts and depth == 0 and word == "FUNCTION" and at(i - 1)[1].upper() == "INTO":
                return _denied("INSERT INTO FUNCTION")
            elif inserts and not selects and word == "FORMAT" and following.upper() != "VALUES":
                # The rest is the client's data, not SQL (may be megabytes). Values rows are
                # expressions chdb evaluates (``VALUES (file('/etc/passwd'))``): those stay checked.
                return None
            elif creates and depth == 0 and engine_clauses and word == "ENGINE":
                engine_kind, engine = at(i + 2) if following == "=" else at(i + 1)
                if engine_kind and Token(engine_kind, engine, 0, 0).identifier.lower() in self.denied_engines:
                    return _denied(f"Engine {engine}")
            i += 1
