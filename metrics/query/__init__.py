"""The one module that turns metric questions into ClickHouse SQL.

Everything a request or an admin form can influence ends up here, so this is where the two rules
of the metrics capability are enforced:

* identifiers (tables, columns, SQL functions) never come from input: a definition names a
  *source*, *measures*, *flags* and *dimensions* by key, and the keys are looked up in the
  registries below (code, reviewed like code). A definition that names anything else does not
  compile, and the admin refuses to save it;
* every value (time range, filter values, event types, quantile levels, limits) is a
  clickhouse-driver parameter (``%(name)s``), escaped by the driver, never formatted into SQL.

How a table is chosen (``_targets``): a rollup can answer when it aggregates the metric's source,
its grain divides the interval, it keeps every grouped/filtered dimension (and ``type`` for an
event-type filter), every aggregation of the metric is a sum of its columns (counts and sums, and
averages as sum/count; never distinct counts or quantiles) and its TTL covers the range. A range
aligned on the grain reads the rollup alone; otherwise the whole buckets inside the range come
from that rollup and the edges from a finer rollup aligned on them or, failing that, from the raw
rows (projected to the rollup's columns). Among the candidates, and the raw table, the one with
the fewest expected rows wins (``rows_per_bucket`` / ``rows_per_second`` hints). Every candidate
gives the same numbers: the tests check each built-in metric against Python-computed truth over
ranges that exercise every path.

It is pure (no Django, no connection; only the clock, for TTLs), so it can be tested on its own.

The package is split along those steps, imports going one way (``vocabulary`` and ``registry`` <-
``definitions`` <- ``planner`` <- ``sql`` / ``series``); this module re-exports the public names, so
callers keep ``from metrics import query`` and ``query.X``. Callers look names up through it at
call time (``query.queries_build(...)``), which is what lets a test patch ``query.queries_build``.
"""

from __future__ import annotations

from metrics.query.definitions import CompiledMetric, MetricSpec, Term, metric_compile
from metrics.query.planner import BuiltQuery, MetricRequest, request_validate
from metrics.query.registry import ROLLUPS, SOURCES, Rollup, Source, source_choices
from metrics.query.series import Point, Series, bucket_starts, series_assemble
from metrics.query.sql import ingestion_lag_build, queries_build, query_build
from metrics.query.vocabulary import (
    AGGREGATIONS,
    DIMENSIONS,
    HIGH_CARDINALITY_DIMENSIONS,
    INTERVALS,
    MAX_LIMIT,
    METRIC_NAME_RE,
    RATIO_PARTS,
    ZERO_FILLED,
    QueryError,
)

__all__ = [
    "AGGREGATIONS",
    "DIMENSIONS",
    "HIGH_CARDINALITY_DIMENSIONS",
    "INTERVALS",
    "MAX_LIMIT",
    "METRIC_NAME_RE",
    "RATIO_PARTS",
    "ROLLUPS",
    "SOURCES",
    "ZERO_FILLED",
    "BuiltQuery",
    "CompiledMetric",
    "MetricRequest",
    "MetricSpec",
    "Point",
    "QueryError",
    "Rollup",
    "Series",
    "Source",
    "Term",
    "bucket_starts",
    "ingestion_lag_build",
    "metric_compile",
    "queries_build",
    "query_build",
    "request_validate",
    "series_assemble",
    "source_choices",
]
