"""``manage.py run_stream``: one stream worker process (run more for more throughput)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Consume the events topic into ClickHouse and the derived-event topics. Processes started with "
        "the same --group split the partitions; SIGTERM stops after committing the last checkpoint."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--group", default=None, help="consumer group (default STREAMS_CONSUMER_GROUP)")
        parser.add_argument(
            "--metrics-port", type=int, default=None, help="Prometheus port (default STREAMS_METRICS_PORT; 0: off)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from streams.app import stream_run

        stream_run(metrics_port=options["metrics_port"], consumer_group=options["group"])
