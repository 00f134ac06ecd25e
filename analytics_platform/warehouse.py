"""The ClickHouse schema, as data: every table and materialized view, and the DDL made from them.

This module is the one place that names the ClickHouse tables (the sink, the query builder, the
batch export and the tests import the names from here) and says how each is built: columns,
engine, ORDER BY, PARTITION BY, TTL, and the materialized views that feed the rollups. The
README's "ClickHouse schema" section documents every table.

Two modes, chosen by ``CLICKHOUSE_CLUSTER`` (settings):

* single node (unset, the default): the tables are the ones ``streams/migrations`` and
  ``metrics/migrations`` built, unchanged (existing databases keep their history; those
  migrations are never edited). ``statements(None)`` describes the same schema as plain
  ``*MergeTree`` tables; a test checks it against the migrated database, so this module and the
  migrations cannot drift apart.
* cluster: ``statements(cluster)`` is ``ON CLUSTER`` DDL: every table ``<t>`` becomes a local
  ``Replicated*MergeTree`` table ``<t>_local`` on every node plus a ``Distributed`` table ``<t>``
  over them, used for reads and writes, so the sink and the query builder keep using the same
  names in both modes. Materialized views are built on the local tables: each shard aggregates
  the rows it stores, and queries (always ``sum()`` / ``uniqExact`` / quantiles over a
  ``GROUP BY``) combine the shards' partial rows through the Distributed tables.

Sharding key of the raw tables: ``kafka_partition``. Ingest chooses the Kafka partition from the
``user_id`` (ingest/producer.py), so every event of a view, the view's summary and all of a
user's views share one partition and therefore one shard: a view's rows stay together, the
``view_summaries`` ReplacingMergeTree can replace a session's row (a replay lands on the same
shard), and ``uniqExact(user_id)`` never sees a user on two shards. It also keeps the sink
exactly-once: the sink skips rows whose offset is at most the largest offset a table holds per
Kafka partition; with all of a partition's rows on one shard, an INSERT that reached some shards
and failed on others leaves each partition either stored up to its offset or not at all, and the
replay writes exactly the missing partitions. (A hash of ``user_id`` would keep views together
too, but would spread one Kafka partition over shards and break that rule.) The rollups'
Distributed tables have no sharding key: only the materialized views on each shard write them,
and ClickHouse refuses a direct INSERT into a multi-shard Distributed table without one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

# --- Table names (single node: the tables; cluster: the Distributed tables) --------------------
EVENTS = "events"
VIEW_SUMMARIES = "view_summaries"
VIEW_MINUTES = "view_minutes"
EVENT_VIDEO_HOUR = "event_video_hour"
EVENT_DIMENSION_HOUR = "event_dimension_hour"
VIEW_DIMENSION_HOUR = "view_dimension_hour"
VIEW_ROLLUP_HOUR = "view_rollup_hour"
METRICS_EVENT_TYPE_MINUTE = "metrics_event_type_minute"
METRICS_EVENT_TYPE_HOUR = "metrics_event_type_hour"
METRICS_VIEW_MINUTE = "metrics_view_minute"
METRICS_VIEW_HOUR = "metrics_view_hour"
METRICS_VIEW_VIDEO_DAY = "metrics_view_video_day"

LOCAL_SUFFIX = "_local"
# The replication path of a local table; ``{shard}`` and ``{replica}`` are the nodes' macros
# (set by the ClickHouse operator), ``{database}`` is expanded by ClickHouse itself.
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/"
REPLICA_NAME = "{replica}"

# Rollup retention (days): minute grains serve ranges up to a month, the others 400 days.
MINUTE_TTL_DAYS = 30
LONG_TTL_DAYS = 400

_DIMS = ("device", "os", "browser", "country", "cdn", "player")
_LC = "LowCardinality(String)"


@dataclass(frozen=True)
class Table:
    """One ClickHouse table: what a ``CREATE TABLE`` needs, and what the README says of it."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (name, ClickHouse type)
    engine: str  # MergeTree | ReplacingMergeTree | SummingMergeTree
    order_by: tuple[str, ...]
    partition_by: str
    ttl: str
    serves: str  # which queries read it (README)
    version: str = ""  # ReplacingMergeTree version column ("" = the last inserted row wins)
    sharding_key: str = ""  # cluster mode; "" = written by materialized views only

    @property
    def local(self) -> str:
        return self.name + LOCAL_SUFFIX

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


@dataclass(frozen=True)
class MaterializedView:
    """A materialized view: on each insert into ``source``, ``SELECT ... GROUP BY`` into ``target``."""

    name: str
    source: str
    target: str
    select: str
    group_by: str
    #: An ``ARRAY JOIN`` clause: each source row becomes several rows before the GROUP BY.
    array_join: str = ""

    def query(self, source: str, *, where: str = "") -> str:
        """The view's SELECT over ``source`` (a table, or a parenthesised subquery).

        The one definition of what the view computes: its DDL is built from it, and so is the
        rebuild of its target from history (``rollup_selects``), which must produce the same rows.
        """
        condition = f" WHERE {where}" if where else ""
        joined = f" {self.array_join}" if self.array_join else ""
        return f"SELECT {self.select} FROM {source}{joined}{condition} GROUP BY {self.group_by}"  # noqa: S608 - code constants


def _events_columns() -> tuple[tuple[str, str], ...]:
    return (
        ("event_id", "UUID"),
        ("type", _LC),
        ("ts", "DateTime64(3, 'UTC')"),
        ("user_id", "String"),
        ("session_id", "String"),
        ("video_id", "String"),
        ("client_ts", "DateTime64(3, 'UTC')"),
        ("received_at", "DateTime64(3, 'UTC')"),
        ("position_ms", "Nullable(Int64)"),
        ("bitrate_kbps", "Nullable(Int64)"),
        ("error_code", "String"),
        ("error_message", "String"),
        ("fatal", "Bool"),
        *((dim, _LC) for dim in _DIMS),
        ("properties", "String"),
        ("late", "Bool"),
        ("kafka_partition", "UInt16"),
        ("kafka_offset", "UInt64"),
        ("kafka_topic_id", _LC),
    )


# Seek latency and picture quality of a view (streams 0007; README "QoE scores"), added after the
# table was built: sums over the view, so averages over views and time-weighted figures are sums.
VIEW_QUALITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("seek_count", "UInt32"),  # seeks from playback that reached playing again
    ("seek_latency_ms", "UInt64"),  # their total wait, seek to playing
    ("bitrate_time_ms", "UInt64"),  # playing time with a known bitrate
    ("bitrate_kbps_ms", "Float64"),  # bitrate x that time
    ("max_bitrate_kbps", "UInt64"),
    ("scale_time_ms", "UInt64"),  # playing time with known rendition and player sizes
    ("upscale_ms", "Float64"),  # upscale fraction x that time
    ("downscale_ms", "Float64"),  # downscale fraction x that time
    ("max_upscale", "Float64"),  # fractions: 1.0 = 100 %
    ("max_downscale", "Float64"),
)

_VIEW_SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_id", "String"),
    ("user_id", "String"),
    ("video_id", "String"),
    ("start_ts", "DateTime64(3, 'UTC')"),
    ("end_ts", "DateTime64(3, 'UTC')"),
    *((dim, _LC) for dim in _DIMS),
    ("has_view_start", "Bool"),
    ("started", "Bool"),
    ("startup_time_ms", "UInt32"),
    ("watch_time_ms", "UInt64"),
    ("rebuffer_count", "UInt32"),
    ("rebuffer_duration_ms", "UInt64"),
    ("error_count", "UInt32"),
    ("fatal_error_count", "UInt32"),
    ("start_failure", "Bool"),
    ("playback_failure", "Bool"),
    ("exit_before_start", "Bool"),
    ("max_position_ms", "Int64"),
    ("completion", "Nullable(Float32)"),
    ("event_count", "UInt32"),
    ("close_reason", _LC),
    ("video_watched_id", "UUID"),
    ("kafka_partition", "UInt16"),
    ("kafka_offset", "UInt64"),
    ("kafka_topic_id", _LC),
    *VIEW_QUALITY_COLUMNS,
)

# Written by the stream worker as minutes settle (streams/processors/views.py), not by a view: a
# playing view is counted while it lasts, not when it closes.
_VIEW_MINUTE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("minute_ts", "DateTime64(3, 'UTC')"),
    ("session_id", "String"),
    ("user_id", "String"),
    ("video_id", "String"),
    *((dim, _LC) for dim in _DIMS),
    ("kafka_partition", "UInt16"),
    ("kafka_offset", "UInt64"),
    ("kafka_topic_id", _LC),
)

_VIEW_SUMS_COLUMNS = tuple(
    (name, "UInt64")
    for name in (
        "views",
        "started_views",
        "watch_time_ms",
        "rebuffer_duration_ms",
        "rebuffer_count",
        "start_failures",
        "playback_failures",
        "exits_before_start",
        "startup_time_ms_sum",
    )
)
_BUCKET = (("bucket", "DateTime('UTC')"),)
_DIM_COLUMNS = tuple((dim, _LC) for dim in _DIMS)
_ROLLUP_DIM_KEY = ("country", "device", "os", "browser", "cdn", "player")


def _rollup_ttl(days: int) -> str:
    return f"toDateTime(bucket) + INTERVAL {days} DAY"


def tables() -> tuple[Table, ...]:
    """Every table, sources before the tables their materialized views feed."""
    # Read when the DDL is generated, as migration 0005 does: the deployment's environment decides.
    events_days = int(settings.EVENTS_RETENTION_DAYS)
    return (
        Table(
            EVENTS,
            _events_columns(),
            "MergeTree",
            ("type", "video_id", "ts", "event_id"),
            "toYYYYMMDD(ts)",
            f"toDateTime(ts) + INTERVAL {events_days} DAY",
            "raw-event metrics (rollups cannot answer: unaligned ranges, custom metrics on raw "
            "columns), live freshness, the daily/hourly batch export (one day = one partition)",
            sharding_key="kafka_partition",
        ),
        Table(
            VIEW_SUMMARIES,
            _VIEW_SUMMARY_COLUMNS,
            "ReplacingMergeTree",
            ("video_id", "start_ts", "session_id"),
            "toYYYYMM(start_ts)",
            f"toDateTime(start_ts) + INTERVAL {LONG_TTL_DAYS} DAY",
            "unique viewers (uniqExact), startup-time quantiles, per-view metrics, the batch export",
            sharding_key="kafka_partition",
        ),
        Table(
            VIEW_MINUTES,
            _VIEW_MINUTE_COLUMNS,
            "MergeTree",
            ("minute_ts", "video_id", "session_id"),
            "toYYYYMMDD(minute_ts)",
            f"toDateTime(minute_ts) + INTERVAL {MINUTE_TTL_DAYS} DAY",
            "concurrent viewers: one row per view and minute it spent playing or rebuffering (streams 0008)",
            sharding_key="kafka_partition",
        ),
        Table(
            EVENT_VIDEO_HOUR,
            (*_BUCKET, ("type", _LC), ("video_id", "String"), ("events", "UInt64"), ("late_events", "UInt64")),
            "SummingMergeTree",
            ("bucket", "type", "video_id"),
            "toYYYYMM(bucket)",
            _rollup_ttl(LONG_TTL_DAYS),
            "event counts per hour or day by type and video (a video's page), up to 400 days",
        ),
        Table(
            EVENT_DIMENSION_HOUR,
            (
                *_BUCKET,
                ("dimension", _LC),
                ("type", _LC),
                ("value", _LC),
                ("events", "UInt64"),
                ("late_events", "UInt64"),
            ),
            "SummingMergeTree",
            ("dimension", "bucket", "type", "value"),
            "toYYYYMM(bucket)",
            _rollup_ttl(LONG_TTL_DAYS),
            "event counts per hour or day by type and one dimension at a time (a row per dimension and"
            " value: events by country, errors on one CDN), up to 400 days (streams 0010)",
        ),
        Table(
            VIEW_ROLLUP_HOUR,
            (*_BUCKET, ("video_id", "String"), *_DIM_COLUMNS, *_VIEW_SUMS_COLUMNS),
            "SummingMergeTree",
            ("bucket", "video_id", *_ROLLUP_DIM_KEY),
            "toYYYYMM(bucket)",
            _rollup_ttl(LONG_TTL_DAYS),
            "view QoE sums per hour or day with any breakdown (and videoId with another), up to 400 days",
        ),
        Table(
            VIEW_DIMENSION_HOUR,
            (*_BUCKET, ("dimension", _LC), ("value", "String"), *_VIEW_SUMS_COLUMNS),
            "SummingMergeTree",
            ("dimension", "bucket", "value"),
            "toYYYYMM(bucket)",
            _rollup_ttl(LONG_TTL_DAYS),
            "view QoE sums per hour or day by one dimension or video at a time (a row per dimension"
            " and value), up to 400 days (streams 0011)",
        ),
        Table(
            METRICS_EVENT_TYPE_MINUTE,
            (*_BUCKET, ("type", _LC), ("events", "UInt64"), ("late_events", "UInt64")),
            "SummingMergeTree",
            ("bucket", "type"),
            "toYYYYMMDD(bucket)",
            f"bucket + INTERVAL {MINUTE_TTL_DAYS} DAY",
            "dashboard event counts per minute, total or by type",
        ),
        Table(
            METRICS_EVENT_TYPE_HOUR,
            (*_BUCKET, ("type", _LC), ("events", "UInt64"), ("late_events", "UInt64")),
            "SummingMergeTree",
            ("bucket", "type"),
            "toYYYYMM(bucket)",
            f"bucket + INTERVAL {LONG_TTL_DAYS} DAY",
            "dashboard event counts per hour or day, total or by type",
        ),
        Table(
            METRICS_VIEW_MINUTE,
            (*_BUCKET, *_VIEW_SUMS_COLUMNS),
            "SummingMergeTree",
            ("bucket",),
            "toYYYYMMDD(bucket)",
            f"bucket + INTERVAL {MINUTE_TTL_DAYS} DAY",
            "dashboard view QoE series per minute without a breakdown",
        ),
        Table(
            METRICS_VIEW_HOUR,
            (*_BUCKET, *_VIEW_SUMS_COLUMNS),
            "SummingMergeTree",
            ("bucket",),
            "toYYYYMM(bucket)",
            f"bucket + INTERVAL {LONG_TTL_DAYS} DAY",
            "dashboard view QoE series per hour or day without a breakdown",
        ),
        Table(
            METRICS_VIEW_VIDEO_DAY,
            (*_BUCKET, ("video_id", "String"), *_VIEW_SUMS_COLUMNS),
            "SummingMergeTree",
            ("bucket", "video_id"),
            "toYYYYMM(bucket)",
            f"bucket + INTERVAL {LONG_TTL_DAYS} DAY",
            "per-video breakdowns (top videos) over days, up to 400 days",
        ),
    )


_DIM_LIST = "video_id, " + ", ".join(_DIMS)
_VIEW_RAW_SUMS = (
    "countIf(has_view_start) AS views, countIf(started) AS started_views, sum(watch_time_ms) AS watch_time_ms,"
    " sum(rebuffer_duration_ms) AS rebuffer_duration_ms, sum(rebuffer_count) AS rebuffer_count,"
    " countIf(start_failure) AS start_failures, countIf(playback_failure) AS playback_failures,"
    " countIf(exit_before_start) AS exits_before_start, sumIf(startup_time_ms, started) AS startup_time_ms_sum"
)
_VIEW_SUMS = ", ".join(f"sum({name}) AS {name}" for name, _ in _VIEW_SUMS_COLUMNS)


def _grain(grain: str) -> str:
    return f"toDateTime(toStartOf{grain}(bucket, 'UTC'), 'UTC') AS bucket"


# What the rollups cost the server is mostly the rows their views write per sink INSERT (and
# later merge): a rollup keyed by video and all six dimensions writes nearly a row per raw row
# (a minute or an hour rarely repeats such a key), so only the view summaries (a row per view,
# a tenth of the events) keep one, per hour; event breakdowns by one dimension read
# ``event_dimension_hour`` (streams 0010), by two ``events`` (README "ClickHouse schema"). Each
# rollup with a coarser grain of the same key reads the finer one's insert blocks.
MATERIALIZED_VIEWS: tuple[MaterializedView, ...] = (
    MaterializedView(
        "events_to_metrics_event_type_minute",
        EVENTS,
        METRICS_EVENT_TYPE_MINUTE,
        "toDateTime(toStartOfMinute(ts, 'UTC'), 'UTC') AS bucket, type, count() AS events,"
        " countIf(late) AS late_events",
        "bucket, type",
    ),
    MaterializedView(
        "metrics_event_type_hour_chained_mv",
        METRICS_EVENT_TYPE_MINUTE,
        METRICS_EVENT_TYPE_HOUR,
        f"{_grain('Hour')}, type, sum(events) AS events, sum(late_events) AS late_events",
        "bucket, type",
    ),
    MaterializedView(
        "events_to_event_video_hour",
        EVENTS,
        EVENT_VIDEO_HOUR,
        "toDateTime(toStartOfHour(ts, 'UTC'), 'UTC') AS bucket, type, video_id, count() AS events,"
        " countIf(late) AS late_events",
        "bucket, type, video_id",
    ),
    # Each event counted once per dimension, under (dimension name, its value): an hour holds a row
    # per type and value of each dimension (hundreds), not one per combination of all six (about a
    # row per raw row, why event_rollup_hour was dropped). It answers a breakdown or filter on one
    # dimension; two dimensions at once still read ``events``.
    MaterializedView(
        "events_to_event_dimension_hour",
        EVENTS,
        EVENT_DIMENSION_HOUR,
        "toDateTime(toStartOfHour(ts, 'UTC'), 'UTC') AS bucket, dimension, type, value, count() AS events,"
        " countIf(late) AS late_events",
        "bucket, dimension, type, value",
        array_join=(
            f"ARRAY JOIN [{', '.join(repr(dim) for dim in _DIMS)}] AS dimension, [{', '.join(_DIMS)}] AS value"
        ),
    ),
    MaterializedView(
        "view_summaries_to_metrics_view_minute",
        VIEW_SUMMARIES,
        METRICS_VIEW_MINUTE,
        f"toDateTime(toStartOfMinute(start_ts, 'UTC'), 'UTC') AS bucket, {_VIEW_RAW_SUMS}",
        "bucket",
    ),
    MaterializedView(
        "metrics_view_hour_chained_mv",
        METRICS_VIEW_MINUTE,
        METRICS_VIEW_HOUR,
        f"{_grain('Hour')}, {_VIEW_SUMS}",
        "bucket",
    ),
    MaterializedView(
        "view_summaries_to_view_rollup_hour",
        VIEW_SUMMARIES,
        VIEW_ROLLUP_HOUR,
        f"toDateTime(toStartOfHour(start_ts, 'UTC'), 'UTC') AS bucket, {_DIM_LIST}, {_VIEW_RAW_SUMS}",
        f"bucket, {_DIM_LIST}",
    ),
    # As events_to_event_dimension_hour, for the view sums and with the video as a dimension: an
    # hour holds a row per value of each dimension and per video watched, where view_rollup_hour
    # holds about a row per view; it answers a breakdown or filter on one of them.
    MaterializedView(
        "view_summaries_to_view_dimension_hour",
        VIEW_SUMMARIES,
        VIEW_DIMENSION_HOUR,
        f"toDateTime(toStartOfHour(start_ts, 'UTC'), 'UTC') AS bucket, dimension, value, {_VIEW_RAW_SUMS}",
        "bucket, dimension, value",
        array_join=(
            f"ARRAY JOIN [{', '.join(repr(dim) for dim in ('video_id', *_DIMS))}] AS dimension, [{_DIM_LIST}] AS value"
        ),
    ),
    MaterializedView(
        "metrics_view_video_day_chained_mv",
        VIEW_ROLLUP_HOUR,
        METRICS_VIEW_VIDEO_DAY,
        f"{_grain('Day')}, video_id, {_VIEW_SUMS}",
        "bucket, video_id",
    ),
)


def cluster_name() -> str:
    """The configured ClickHouse cluster ("" = single node)."""
    return str(settings.CLICKHOUSE_CLUSTER)


def _quote(value: str) -> str:
    # Engine arguments and cluster names are string literals: escape as ClickHouse does.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _engine(table: Table, replicated: bool) -> str:
    if not replicated:
        return table.engine + (f"({table.version})" if table.version else "")
    args = [_quote(REPLICA_PATH + table.local), _quote(REPLICA_NAME)]
    if table.version:
        args.append(table.version)
    return f"Replicated{table.engine}({', '.join(args)})"


def _create_table(table: Table, *, name: str, engine: str, on_cluster: str) -> str:
    columns = ", ".join(f"{_ident(column)} {kind}" for column, kind in table.columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {name}{on_cluster} ({columns}) ENGINE = {engine}"
        f" PARTITION BY {table.partition_by} ORDER BY ({', '.join(table.order_by)})"
        f" TTL {table.ttl} SETTINGS ttl_only_drop_parts = 1"
    )


def _create_view(view: MaterializedView, *, name: str, target: str, source: str, on_cluster: str) -> str:
    return f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}{on_cluster} TO {target} AS {view.query(source)}"


def statements(cluster: str | None, database: str | None = None) -> list[str]:
    """The DDL of the whole schema, tables first (in dependency order), then materialized views.

    ``cluster`` None or "": plain tables named as today (what the migrations built). A cluster
    name: ``ON CLUSTER`` statements creating ``<t>_local`` Replicated tables, ``<t>`` Distributed
    tables and the materialized views on the local tables. ``database`` qualifies every name
    (default: the ``clickhouse`` database's NAME): an ``ON CLUSTER`` statement runs on every node,
    and a view's inner SELECT must not depend on a node's default database.
    """
    db = database if database is not None else str(settings.DATABASES["clickhouse"]["NAME"])

    def qualified(name: str) -> str:
        return f"{_ident(db)}.{_ident(name)}" if db else _ident(name)

    if not cluster:
        out = [_create_table(t, name=qualified(t.name), engine=_engine(t, False), on_cluster="") for t in tables()]
        out += [
            _create_view(
                v, name=qualified(v.name), target=qualified(v.target), source=qualified(v.source), on_cluster=""
            )
            for v in MATERIALIZED_VIEWS
        ]
        return out
    out = []
    for t in tables():
        out += cluster_table_statements(t, cluster, db)
    out += [cluster_view_statement(v, cluster, db) for v in MATERIALIZED_VIEWS]
    return out


def cluster_view_statement(view: MaterializedView, cluster: str, database: str) -> str:
    """One materialized view in cluster mode: on every node, from the local source to the local target."""

    def qualified(name: str) -> str:
        return f"{_ident(database)}.{_ident(name)}" if database else _ident(name)

    return _create_view(
        view,
        name=qualified(view.name),
        target=qualified(view.target + LOCAL_SUFFIX),
        source=qualified(view.source + LOCAL_SUFFIX),
        on_cluster=f" ON CLUSTER {_quote(cluster)}",
    )


def view_named(name: str) -> MaterializedView:
    for view in MATERIALIZED_VIEWS:
        if view.name == name:
            return view
    raise KeyError(name)


def cluster_table_statements(table: Table, cluster: str, database: str) -> list[str]:
    """One table in cluster mode: its Replicated ``<t>_local`` table, then the Distributed ``<t>``."""

    def qualified(name: str) -> str:
        return f"{_ident(database)}.{_ident(name)}" if database else _ident(name)

    on_cluster = f" ON CLUSTER {_quote(cluster)}"
    distributed_args = [_quote(cluster), _quote(database) if database else "currentDatabase()", _quote(table.local)]
    if table.sharding_key:
        distributed_args.append(table.sharding_key)
    return [
        _create_table(table, name=qualified(table.local), engine=_engine(table, True), on_cluster=on_cluster),
        f"CREATE TABLE IF NOT EXISTS {qualified(table.name)}{on_cluster} AS {qualified(table.local)}"
        f" ENGINE = Distributed({', '.join(distributed_args)})",
    ]


def add_columns_statements(
    table: Table, columns: Iterable[tuple[str, str]], cluster: str, database: str | None = None
) -> list[str]:
    """``ADD COLUMN IF NOT EXISTS`` for columns added to ``table`` after it was built.

    Cluster mode: the local table on every node, then the Distributed table (it does not follow
    its local table's columns by itself). Idempotent: a cluster whose schema streams 0006 built
    after the columns were declared here already has them, and a rerun completes a partial run.
    """
    db = database if database is not None else str(settings.DATABASES["clickhouse"]["NAME"])

    def qualified(name: str) -> str:
        return f"{_ident(db)}.{_ident(name)}" if db else _ident(name)

    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {_ident(name)} {kind}" for name, kind in columns)
    if not cluster:
        return [f"ALTER TABLE {qualified(table.name)} {adds}"]
    on_cluster = f" ON CLUSTER {_quote(cluster)}"
    return [f"ALTER TABLE {qualified(name)}{on_cluster} {adds}" for name in (table.local, table.name)]


def without_on_cluster(statement: str) -> str:
    """The statement as one node would run it (how the tests execute cluster DDL in chdb, which
    refuses ``ON CLUSTER``)."""
    head, sep, tail = statement.partition(" ON CLUSTER ")
    if not sep:
        return statement
    # The cluster literal is the first token of ``tail``; everything after it is kept verbatim.
    literal_end = _literal_end(tail)
    return head + tail[literal_end:]


def _literal_end(text: str) -> int:
    assert text.startswith("'"), text
    i = 1
    while text[i] != "'":
        i += 2 if text[i] == "\\" else 1
    return i + 1


def table_named(name: str) -> Table:
    for table in tables():
        if table.name == name:
            return table
    raise KeyError(name)


def names() -> Iterable[str]:
    """Every table name (as the application reads and writes them)."""
    return (t.name for t in tables())


def drop_statements(cluster: str | None, database: str | None = None) -> list[str]:
    """Undo ``statements``: views first, then Distributed and local tables (data is lost)."""
    views = [v.name for v in reversed(MATERIALIZED_VIEWS)]
    return drop_named_statements(views, [t.name for t in reversed(tables())], cluster, database)


def drop_named_statements(
    views: Iterable[str], table_names: Iterable[str], cluster: str | None, database: str | None = None
) -> list[str]:
    """``DROP ... IF EXISTS`` of these views, then these tables (in cluster mode also ``<t>_local``)."""
    db = database if database is not None else str(settings.DATABASES["clickhouse"]["NAME"])
    prefix = f"{_ident(db)}." if db else ""
    on_cluster = f" ON CLUSTER {_quote(cluster)}" if cluster else ""
    out = [f"DROP VIEW IF EXISTS {prefix}{_ident(name)}{on_cluster}" for name in views]
    for name in table_names:
        out.append(f"DROP TABLE IF EXISTS {prefix}{_ident(name)}{on_cluster}")
        if cluster:
            out.append(f"DROP TABLE IF EXISTS {prefix}{_ident(name + LOCAL_SUFFIX)}{on_cluster}")
    return out


class SingleNodeSchemaError(RuntimeError):
    """The database holds the single-node tables; cluster DDL would silently skip them."""


def cluster_schema_check(existing: Iterable[tuple[str, str]]) -> None:
    """Refuse cluster DDL on a database that has the single-node schema.

    ``existing``: (name, engine) of the tables already there under the application's names. The
    DDL is ``IF NOT EXISTS``: over a plain ``events`` MergeTree it would create ``events_local``
    and views on it, skip the Distributed ``events``, and the sink would keep writing the plain
    table while every rollup on the local tables stayed empty. Converting a single-node database
    is not done by this module (README, "ClickHouse schema").
    """
    plain = sorted(name for name, engine in existing if engine != "Distributed")
    if plain:
        raise SingleNodeSchemaError(
            f"CLICKHOUSE_CLUSTER is set but {', '.join(plain)} are single-node tables ({len(plain)}):"
            " unset CLICKHOUSE_CLUSTER for this database, or migrate into a new database on the cluster"
        )


# --- Rebuilding rollups from history (analytics_platform/rollup_rebuild.py) --------------------

_PARTITION_BY = re.compile(r"toYYYYMM(DD)?\((\w+)\)")
_TTL_DAYS = re.compile(r".* \+ INTERVAL (\d+) DAY")


@dataclass(frozen=True)
class Partitioning:
    """A table's time partitions, read from its ``PARTITION BY`` (by UTC day or month of a column).

    A rebuild replaces one partition at a time and must know which rows of the sources fall into
    it; both come from here so that they cannot disagree with the DDL.
    """

    column: str
    daily: bool  # toYYYYMMDD (one partition a day) or toYYYYMM (a month)

    def partition_id(self, day: dt.date) -> str:
        return day.strftime("%Y%m%d" if self.daily else "%Y%m")

    def span(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) in UTC of the partition holding ``day``."""
        if self.daily:
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return start, start + dt.timedelta(days=1)
        start = dt.datetime(day.year, day.month, 1, tzinfo=dt.UTC)
        end = dt.datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=dt.UTC)
        return start, end


def partitioning(table: Table) -> Partitioning:
    match = _PARTITION_BY.fullmatch(table.partition_by)
    if match is None:
        raise ValueError(f"{table.name}: PARTITION BY {table.partition_by} is not the UTC day or month of a column")
    return Partitioning(column=match.group(2), daily=bool(match.group(1)))


def retention_days(table: Table) -> int:
    """The days a row is kept (the TTL): older rows may already be gone."""
    match = _TTL_DAYS.fullmatch(table.ttl)
    if match is None:
        raise ValueError(f"{table.name}: TTL {table.ttl} is not '<time> + INTERVAL <n> DAY'")
    return int(match.group(1))


def views_into(target: str) -> tuple[MaterializedView, ...]:
    return tuple(view for view in MATERIALIZED_VIEWS if view.target == target)


def rollup_names() -> tuple[str, ...]:
    """The tables fed by materialized views (what a rebuild can re-derive), in dependency order."""
    return tuple(table.name for table in tables() if views_into(table.name))


def raw_sources(target: str) -> tuple[str, ...]:
    """The tables at the roots of the views that feed ``target`` (written by the sink, not by views)."""
    found: list[str] = []
    for view in views_into(target):
        for name in raw_sources(view.source) if views_into(view.source) else (view.source,):
            if name not in found:
                found.append(name)
    return tuple(found)


def _time_literal(moment: dt.datetime) -> str:
    # Built from a datetime, never from text: digits, dashes and colons only.
    return f"toDateTime64('{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}', 3, 'UTC')"


def rollup_selects(target: str, *, start: dt.datetime, end: dt.datetime, database: str = "") -> list[str]:
    """SELECTs whose rows, summed, are what the views write into ``target`` for the raw rows whose
    time (their partition column) lies in [start, end).

    A chained view reads a finer rollup's insert blocks; here it reads the finer rollup's own
    SELECT over the raw rows instead, nested, so a rollup is re-derived from ``events`` /
    ``view_summaries`` even where the finer rollup has already expired (minute rollups keep 30
    days, hour rollups 400). The sums are the same: the views only add up partial rows. A raw
    ReplacingMergeTree source is read with ``FINAL``: the sink writes each of its rows once, so
    the views saw each row once, and FINAL keeps a stray replayed row from counting twice.
    """

    def qualified(name: str) -> str:
        return f"{_ident(database)}.{_ident(name)}" if database else _ident(name)

    def derive(view: MaterializedView) -> str:
        feeders = views_into(view.source)
        if feeders:
            return view.query("(" + " UNION ALL ".join(derive(feeder) for feeder in feeders) + ")")
        source = table_named(view.source)
        column = _ident(partitioning(source).column)
        final = " FINAL" if source.engine.startswith("Replacing") else ""
        where = f"{column} >= {_time_literal(start)} AND {column} < {_time_literal(end)}"
        return view.query(qualified(source.name) + final, where=where)

    views = views_into(target)
    if not views:
        raise KeyError(f"{target} is not fed by a materialized view")
    return [derive(view) for view in views]


def rollup_definition(target: str) -> str:
    """A digest of how ``target`` is derived and stored: changes when its views or columns do, so
    partitions rebuilt under an older definition are rebuilt again."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    table = table_named(target)
    text = "\n".join([*rollup_selects(target, start=epoch, end=epoch), repr(table.columns), table.partition_by])
    return hashlib.sha256(text.encode()).hexdigest()
