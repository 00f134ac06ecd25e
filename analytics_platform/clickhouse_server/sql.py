"""Just enough SQL lexing to route a query, never to rewrite it.

Over the native protocol the server, not the client, decides whether an ``INSERT`` waits for data
blocks: ClickHouse does it in ``InterpreterInsertQuery`` (a "pushing" pipeline when the query has
no ``SELECT`` and no inline data). chdb offers no such hook, so the server finds it out here: the
target table and column list (for the sample block), and the pieces of the statement to give
chdb once the data has arrived. Everything else chdb parses itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>--[^\n]*|\#[^\n]*|/\*.*?\*/)
    | (?P<quoted>`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*")
    | (?P<string>'(?:[^'\\]|\\.|'')*')
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
