"""CPU cost of the embedded ClickHouse server's statement gate (``sql.StatementGate.refusal``).

Every client statement passes the gate before chdb sees it, so its cost is added to each query.
Times it in process (no server, no chdb) for statements shaped like the application's own: a
metric SELECT as ``metrics/query/`` builds them, the sink's block INSERT head, an inline
``INSERT ... FORMAT JSONEachRow`` carrying 1 MB of data (the gate stops at the data), a
``VALUES`` insert of 1000 rows (checked to the end: Values rows are expressions), and a migration.
The table function and engine lists are the real engine's (one chdb connection at start).

Run: ``PYTHONPATH=. python bench/bench_statement_gate.py [--repeat 20000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analytics_platform.clickhouse_server.engine import (  # noqa: E402
    EngineConnection,
    engine_names,
    table_function_names,
)
from analytics_platform.clickhouse_server.sql import StatementGate  # noqa: E402

METRIC_SELECT = """
SELECT toStartOfHour(bucket) AS t, video_id, country,
       uniqMerge(views_state) AS views, sumMerge(watch_time_state) AS watch_time_ms,
       quantilesTDigestMerge(0.5, 0.95)(startup_state) AS startup,
       if(uniqMerge(views_state) = 0, NULL, sumMerge(failures_state) / uniqMerge(views_state)) AS failure_rate
FROM analytics.views_by_minute
WHERE bucket >= %(from)s AND bucket < %(to)s AND video_id IN %(videos)s AND country = %(country)s
GROUP BY t, video_id, country
ORDER BY t, views DESC
LIMIT 100 BY t
SETTINGS max_threads = 2, max_execution_time = 30
"""
SINK_INSERT = (
    "INSERT INTO analytics.events (event_id, type, user_id, session_id, video_id, ts, received_at,"
    " position_ms, bitrate_kbps, error_code, error_message, fatal, device, os, browser, country, cdn,"
    " player, properties) VALUES"
)
MIGRATION = """
CREATE TABLE IF NOT EXISTS analytics.views_by_minute (
    bucket DateTime('UTC'), video_id String, country LowCardinality(String),
    views_state AggregateFunction(uniq, String), watch_time_state AggregateFunction(sum, UInt64)
) ENGINE = AggregatingMergeTree PARTITION BY toYYYYMM(bucket) ORDER BY (bucket, video_id, country)
TTL bucket + INTERVAL 400 DAY SETTINGS index_granularity = 8192
"""


def _inline_json(size: int) -> str:
    row = json.dumps({"event_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "type": "heartbeat", "position_ms": 1})
    return "INSERT INTO analytics.events FORMAT JSONEachRow\n" + "\n".join([row] * (size // len(row)))


def _values(rows: int) -> str:
    return "INSERT INTO analytics.t (a, b, c) VALUES " + ", ".join(f"({i}, 'video-{i}', now())" for i in range(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as tmp:
        conn = EngineConnection(tmp)
        gate = StatementGate(table_function_names(conn), engine_names(conn))
        conn.close()
    cases = {
        f"metric SELECT ({len(METRIC_SELECT)} chars)": (METRIC_SELECT, args.repeat),
        "metric SELECT with a ';' (token scan)": (METRIC_SELECT + ";", args.repeat),
        "sink block INSERT head": (SINK_INSERT, args.repeat),
        "migration CREATE TABLE": (MIGRATION, args.repeat),
        "inline JSONEachRow INSERT, 1 MB": (_inline_json(1 << 20), args.repeat),
        "VALUES INSERT, 1000 rows": (_values(1000), max(1, args.repeat // 200)),
    }
    for name, (sql, repeat) in cases.items():
        assert gate.refusal(sql) is None, name
        started = time.perf_counter()
        for _ in range(repeat):
            gate.refusal(sql)
        per_call = (time.perf_counter() - started) / repeat
        print(f"{name:40s} {per_call * 1e6:10.1f} us per statement")


if __name__ == "__main__":
    main()
