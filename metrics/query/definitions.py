"""Definitions: a metric as plain data, checked against the registries (``metric_compile``).

``_Target`` (one table a compiled metric is rendered on) lives here rather than in the planner
because ``metric_compile`` asks it whether a rollup named as a source can compute the aggregation,
and imports go one way: registry <- definitions <- planner <- sql / series.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metrics.query.registry import ROLLUPS, SOURCES, Rollup, Source
from metrics.query.vocabulary import AGGREGATIONS, DIMENSIONS, METRIC_NAME_RE, RATIO_PARTS, ZERO_FILLED, QueryError

# --- Definitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One aggregation: ``aggregation(measure)`` over the rows where every condition holds."""

    aggregation: str
    measure: str = ""
    conditions: tuple[str, ...] = ()
    quantile: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A metric definition as plain data (the Django model converts itself to this)."""

    name: str
    source: str
    aggregation: str
    measure: str = ""
    quantile: float | None = None
    conditions: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    numerator_aggregation: str = ""
    denominator_aggregation: str = ""
    denominator_measure: str = ""
    denominator_conditions: tuple[str, ...] = ()
    dimensions: tuple[str, ...] = ()
    unit: str = ""


@dataclass(frozen=True)
class CompiledMetric:
    """A definition checked against the registries, ready to be rendered on a table."""

    spec: MetricSpec
    source: Source  # the raw table (for a rollup-sourced definition: the rollup's base)
    rollup: Rollup | None  # set when the definition names a rollup as its source
    terms: tuple[Term, ...]  # one term, or numerator and denominator of a ratio
    dimensions: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def zero_filled(self) -> bool:
        return self.spec.aggregation in ZERO_FILLED


def _check_conditions(conditions: Sequence[str], flags: Mapping[str, str], *, field_name: str) -> None:
    for condition in conditions:
        name = condition[1:] if condition.startswith("!") else condition
        if name not in flags:
            raise QueryError(
                f"unknown condition {condition!r}; known: {', '.join(sorted(flags)) or 'none'}",
                field=field_name,
            )


def _check_term(term: Term, *, measures: Mapping[str, str], flags: Mapping[str, str], prefix: str) -> None:
    if term.aggregation == "count":
        if term.measure:
            raise QueryError("count takes no measure", field=f"{prefix}measure")
    elif term.measure not in measures:
        raise QueryError(
            f"{term.aggregation} needs a measure, one of: {', '.join(sorted(measures))}",
            field=f"{prefix}measure",
        )
    if term.aggregation == "quantile" and (term.quantile is None or not 0 < term.quantile < 1):
        raise QueryError("quantile needs a level strictly between 0 and 1", field="quantile")
    _check_conditions(term.conditions, flags, field_name=f"{prefix}conditions")


def metric_compile(spec: MetricSpec) -> CompiledMetric:
    """Check a definition against the registries; raise :class:`QueryError` naming the bad field.

    The admin calls this before saving, so every stored definition compiles; the API calls it
    again per request (cheap) because code, and with it the registries, may change after a save.
    """
    if not METRIC_NAME_RE.match(spec.name):
        raise QueryError("name must match ^[a-z][a-z0-9_]{0,63}$", field="name")
    source = SOURCES.get(spec.source)
    rollup = ROLLUPS.get(spec.source) if source is None else None
    if source is None and (rollup is None or not rollup.selectable):
        raise QueryError(f"unknown source {spec.source!r}", field="source")
    base = SOURCES[rollup.base] if rollup is not None else source
    assert base is not None
    measures, flags = base.measures, base.flags
    dimensions: Mapping[str, str] = rollup.dimensions if rollup is not None else base.dimensions
    if spec.aggregation not in AGGREGATIONS:
        raise QueryError(f"aggregation must be one of {', '.join(AGGREGATIONS)}", field="aggregation")

    if spec.aggregation == "ratio":
        if spec.numerator_aggregation not in RATIO_PARTS:
            raise QueryError(
                f"a ratio's numerator must be one of {', '.join(RATIO_PARTS)}", field="numerator_aggregation"
            )
        if spec.denominator_aggregation not in RATIO_PARTS:
            raise QueryError(
                f"a ratio's denominator must be one of {', '.join(RATIO_PARTS)}", field="denominator_aggregation"
            )
        terms: tuple[Term, ...] = (
            Term(spec.numerator_aggregation, spec.measure, tuple(spec.conditions)),
            Term(spec.denominator_aggregation, spec.denominator_measure, tuple(spec.denominator_conditions)),
        )
        _check_term(terms[0], measures=measures, flags=flags, prefix="")
        _check_term(terms[1], measures=measures, flags=flags, prefix="denominator_")
    else:
        if spec.numerator_aggregation or spec.denominator_aggregation or spec.denominator_measure:
            raise QueryError("numerator/denominator fields are only for ratios", field="denominator_aggregation")
        terms = (Term(spec.aggregation, spec.measure, tuple(spec.conditions), spec.quantile),)
        _check_term(terms[0], measures=measures, flags=flags, prefix="")

    if spec.event_types:
        if "type" not in dimensions:
            raise QueryError("this source has no event type to filter on", field="event_types")
        for event_type in spec.event_types:
            if not re.match(r"^[a-z][a-z0-9_.]{0,63}$", event_type):
                raise QueryError(f"invalid event type {event_type!r}", field="event_types")

    allowed = tuple(spec.dimensions) if spec.dimensions else tuple(d for d in DIMENSIONS if d in dimensions)
    for dim in allowed:
        if dim not in dimensions:
            raise QueryError(f"dimension {dim!r} is not available on source {spec.source!r}", field="dimensions")
    compiled = CompiledMetric(spec=spec, source=base, rollup=rollup, terms=terms, dimensions=allowed)
    if rollup is not None and _Target(source=base, rollup=rollup).value(compiled, {}) is None:
        raise QueryError(f"rollup {rollup.key!r} cannot compute this aggregation", field="aggregation")
    return compiled


class _Target:
    """A table a compiled metric can be rendered on: its raw source or one of its rollups."""

    def __init__(self, *, source: Source, rollup: Rollup | None = None) -> None:
        self.source = source
        self.rollup = rollup

    @property
    def table(self) -> str:
        if self.rollup is not None:
            return self.rollup.table
        return self.source.table + (" FINAL" if self.source.final else "")

    @property
    def time_column(self) -> str:
        return self.rollup.time_column if self.rollup is not None else self.source.time_column

    @property
    def dimensions(self) -> Mapping[str, str]:
        return self.rollup.dimensions if self.rollup is not None else self.source.dimensions

    @property
    def params(self) -> dict[str, Any]:
        """Parameters ``table`` refers to (none for a plain table)."""
        return {}

    @property
    def place(self) -> tuple[Any, ...]:
        """What the rows read are: metrics whose targets share a place are one scan (``queries_build``)."""
        return (self.source.key, self.rollup.table if self.rollup is not None else None)

    def merged(self, others: Sequence[_Target]) -> _Target:
        """One target reading what this one and ``others`` (of the same place) read."""
        return self

    def condition(self, conditions: Sequence[str]) -> str:
        """SQL for the conjunction of named flags of the base table."""
        parts = []
        for condition in conditions:
            negate = condition.startswith("!")
            expr = self.source.flags[condition[1:] if negate else condition]
            parts.append(f"NOT ({expr})" if negate else f"({expr})")
        return " AND ".join(parts)

    def term(self, term: Term, params: dict[str, Any], index: str) -> str | None:
        """SQL aggregate for ``term`` on this table, or None when this table cannot answer it."""
        if self.rollup is None:
            source = self.source
            cond = self.condition(term.conditions)
            column = source.measures.get(term.measure, "")
            if term.aggregation == "count":
                return f"countIf({cond})" if cond else "count()"
            if term.aggregation == "uniq":
                return f"uniqExactIf({column}, {cond})" if cond else f"uniqExact({column})"
            if term.aggregation == "sum":
                return f"sumIf({column}, {cond})" if cond else f"sum({column})"
            # Over no rows avg is nan and quantileExact of an integer column is 0: both are "no value".
            rows = f"countIf({cond})" if cond else "count()"
            if term.aggregation == "avg":
                return f"if({rows} = 0, NULL, {f'avgIf({column}, {cond})' if cond else f'avg({column})'})"
            if term.aggregation == "quantile":
                name = f"q{index}"
                params[name] = float(term.quantile or 0.5)
                if cond:
                    return f"if({rows} = 0, NULL, quantileExactIf(%({name})s)({column}, {cond}))"
                return f"if({rows} = 0, NULL, quantileExact(%({name})s)({column}))"
            return None
        rollup = self.rollup
        flags = tuple(sorted(term.conditions))
        count_col = rollup.counts.get(flags)
        sum_col = rollup.sums.get((term.measure, flags))
        if term.aggregation == "count" and count_col:
            return f"sum({count_col})"
        if term.aggregation == "sum" and sum_col:
            return f"sum({sum_col})"
        if term.aggregation == "avg" and sum_col and count_col:
            return f"if(sum({count_col}) = 0, NULL, sum({sum_col}) / sum({count_col}))"
        return None

    def value(self, metric: CompiledMetric, params: dict[str, Any], slot: int = 0) -> str | None:
        """The metric's SQL value on this table (None: it cannot answer); ``slot`` keeps the
        parameters of several metrics rendered into one query apart."""
        rendered = [self.term(term, params, f"{slot}_{i}") for i, term in enumerate(metric.terms)]
        if any(r is None for r in rendered):
            return None
        if metric.spec.aggregation == "ratio":
            num, den = rendered
            return f"if({den} = 0, NULL, {num} / {den})"
        value = rendered[0]
        assert value is not None
        return value
