"""Just enough SQL lexing to route a query, never to rewrite it.

Over the native protocol the server, not the client, decides whether an ``INSERT`` waits for data
blocks: ClickHouse does it in ``InterpreterInsertQuery`` (a "pushing" pipeline when the query has
no ``SELECT`` and no inline data). chdb offers no such hook, so the server finds it out here: the
target table and column list (for the sample block), and the pieces of the statement to give
chdb once the data has arrived. Everything else chdb parses itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
    out: list[Token] = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind in ("ws", "comment"):
            continue
        out.append(Token(kind, match.group(), match.start(), match.end()))
        if limit is not None and len(out) >= limit:
            break
    return out


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
    toks = tokens(sql)
    if len(toks) < 3 or toks[0].upper != "INSERT" or toks[1].upper != "INTO":
        return None
    i = 2
    if toks[i].upper == "TABLE":
        i += 1
    if i >= len(toks) or toks[i].upper == "FUNCTION":
        return None
    table_start = toks[i].start
    i += 1
    while i + 1 < len(toks) and toks[i].text == "." and toks[i + 1].kind in ("word", "quoted"):
        i += 2
    table = sql[table_start : toks[i - 1].end]
    columns: list[str] | None = None
    if i < len(toks) and toks[i].text == "(":
        if i + 1 < len(toks) and toks[i + 1].upper in _QUERY_KEYWORDS:
            return None  # INSERT INTO t (SELECT ...)
        columns, i = _column_list(toks, i + 1)
        if columns is None:
            return None
    head = sql[: toks[i - 1].end]
    clause_start = toks[i].start if i < len(toks) else len(sql)
    statement_end = len(sql)
    while i < len(toks):
        word = toks[i].upper
        if word in _QUERY_KEYWORDS:
            return None
        if word in _DATA_KEYWORDS:
            statement_end = toks[i].start
            data_from = i + 1 if word == "VALUES" else i + 2
            rest = toks[data_from:]
            if rest and not (len(rest) == 1 and rest[0].text == ";"):
                return None  # inline data: chdb parses it from the query text
            break
        i += 1
    settings = sql[clause_start:statement_end].strip()
    if settings and not settings.upper().startswith("SETTINGS"):
        return None  # something this lexer does not understand: let chdb report it
    return InsertTarget(table=table, columns=columns, head=head, settings=settings)


def _column_list(toks: list[Token], i: int) -> tuple[list[str] | None, int]:
    """Parse ``a, b.c, `d`)`` starting after the opening parenthesis."""
    columns: list[str] = []
    current: list[str] = []
    while i < len(toks):
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
