"""Vocabulary of the API: the names a request or a definition may use, and the builder's error."""

from __future__ import annotations

import re

# --- Vocabulary of the API -------------------------------------------------------------------

#: Interval name -> (seconds, ClickHouse interval unit). The unit is a keyword from this table.
INTERVALS: dict[str, tuple[int, str]] = {
    "minute": (60, "MINUTE"),
    "hour": (3600, "HOUR"),
    "day": (86400, "DAY"),
}

#: The dimensions of the public contract (camelCase, as on the wire).
DIMENSIONS: tuple[str, ...] = ("videoId", "country", "device", "os", "browser", "cdn", "player", "type")
#: Dimensions with unbounded values, whose group count grows with the range (and the catalogue):
#: the request bounds cap their ranges, and the SQL narrows their groups before it aggregates.
HIGH_CARDINALITY_DIMENSIONS: frozenset[str] = frozenset({"videoId"})

AGGREGATIONS: tuple[str, ...] = ("count", "uniq", "sum", "avg", "quantile", "ratio")
#: Aggregations allowed as the numerator or denominator of a ratio.
RATIO_PARTS: tuple[str, ...] = ("count", "uniq", "sum")
#: Aggregations whose empty bucket means "nothing happened" (0); the others have no value (null).
ZERO_FILLED: frozenset[str] = frozenset({"count", "uniq", "sum"})

METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

MAX_LIMIT = 10_000


class QueryError(ValueError):
    """A definition or a request the builder cannot turn into SQL; ``field`` names the culprit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
