"""Print the ClickHouse schema's DDL (analytics_platform/warehouse.py) for review.

``--cluster NAME`` (default: ``CLICKHOUSE_CLUSTER``): the ON CLUSTER statements that migration
streams 0006 runs in cluster mode. Without a cluster: the single-node schema the migrations
built. Statements end with ``;`` so the output can be fed to ``clickhouse-client --multiquery``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from analytics_platform import warehouse


class Command(BaseCommand):
    help = "Print the ClickHouse DDL (single node, or ON CLUSTER with --cluster)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--cluster", default=None, help="cluster name (default: CLICKHOUSE_CLUSTER)")
        parser.add_argument("--database", default=None, help="database (default: the clickhouse database's NAME)")
        parser.add_argument("--drop", action="store_true", help="print the statements that drop the schema")

    def handle(self, *args: Any, cluster: str | None, database: str | None, drop: bool, **options: Any) -> None:
        name = warehouse.cluster_name() if cluster is None else cluster
        build = warehouse.drop_statements if drop else warehouse.statements
        for statement in build(name or None, database):
            self.stdout.write(statement + ";")
