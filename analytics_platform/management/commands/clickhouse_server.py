"""``manage.py clickhouse_server``: the embedded ClickHouse server (see analytics_platform/clickhouse_server)."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve the embedded ClickHouse engine (chdb) over the native TCP protocol."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=9000)
        parser.add_argument("--data-dir", required=True)
        parser.add_argument("--user", default=None)
        parser.add_argument("--password", default=None, help="prefer $CLICKHOUSE_SERVER_PASSWORD (argv shows in ps)")
        parser.add_argument("--insecure-no-password", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        from analytics_platform.clickhouse_server.cli import main

        argv = ["--host", options["host"], "--port", str(options["port"]), "--data-dir", options["data_dir"]]
        if options["user"]:
            argv += ["--user", options["user"]]
        if options["password"]:
            argv += ["--password", options["password"]]
        if options["insecure_no_password"]:
            argv.append("--insecure-no-password")
        # Django already configured structlog + JSON logging for this process.
        main(argv, configure_logging=False)
