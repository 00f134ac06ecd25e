"""``manage.py schema_registry``: the embedded schema registry (see analytics_platform/schema_registry)."""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve a Confluent-compatible schema registry over schemas kept in a data dir."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8081)
        parser.add_argument("--data-dir", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        from analytics_platform.schema_registry.cli import main

        # Credentials: SCHEMA_REGISTRY_SERVER_USER_INFO in the environment (never on the command line).
        code = main(
            ["--host", options["host"], "--port", str(options["port"]), "--data-dir", options["data_dir"]],
            configure_logging=False,  # Django already configured the JSON logging of this process
        )
        if code:
            raise SystemExit(code)
