"""Run statements in chdb with a given ClickHouse config, in a process of its own.

Usage: ``python chdb_run.py DB_DIR CONFIG_XML < statements.json > results.json``. Each result is
``{"ok": bool, "rows": [...] | None, "error": str}``. A process of its own because chdb is one
engine per process and may hang at exit once it has talked to ZooKeeper (``os._exit``).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    import chdb  # the embedded engine; imported here so the test process never loads it

    db_dir, config = sys.argv[1], sys.argv[2]
    statements = json.load(sys.stdin)
    conn = chdb.connect(f"file:{db_dir}?config-file={config}")
    cursor = conn.cursor()
    results = []
    for statement in statements:
        try:
            cursor.execute(statement)
            rows = [list(row) for row in cursor.fetchall()] if cursor.description else None
            results.append({"ok": True, "rows": rows, "error": ""})
        except Exception as exc:  # noqa: BLE001 -- every failure is a result to report
            results.append({"ok": False, "rows": None, "error": str(exc)[:2000]})
    sys.stdout.write(json.dumps(results, default=str))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
