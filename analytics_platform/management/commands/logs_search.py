"""``manage.py logs_search``: the shipped log lines of a request, a trace or a level, newest first."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from elasticsearch import ApiError, TransportError

from analytics_platform.log_store import (
    LEVELS,
    duration_parse,
    log_records_search,
    log_store_client_create,
    log_store_config_get,
)

# Elasticsearch's default index.max_result_window.
MAX_LIMIT = 10_000
# Exit status when the log store is not configured or cannot be reached (1 is a bad argument).
UNAVAILABLE = 2


class Command(BaseCommand):
    help = (
        "Print log lines shipped to Elasticsearch (ELASTICSEARCH_LOGS_URL) as JSON lines, newest first. "
        f"Exits with {UNAVAILABLE} when Elasticsearch is not configured or unreachable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--request-id", help="lines of this request (X-Request-ID)")
        parser.add_argument("--trace-id", help="lines of this OpenTelemetry trace (32 hex digits)")
        parser.add_argument(
            "--level",
            type=str.lower,
            choices=LEVELS,
            help="this level and more severe ones (warning: warning, error, critical)",
        )
        parser.add_argument("--since", default="1h", help="how far back: 30s, 15m, 2h, 7d (default 1h)")
        parser.add_argument("--limit", type=int, default=100, help=f"at most this many lines (100; max {MAX_LIMIT})")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = duration_parse(options["since"])
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from exc
        if not 1 <= options["limit"] <= MAX_LIMIT:
            raise CommandError(f"--limit must be between 1 and {MAX_LIMIT}")
        config = log_store_config_get()
        if config is None:
            raise CommandError(
                "Elasticsearch is not configured: set ELASTICSEARCH_LOGS_URL (logs are on stdout only)",
                returncode=UNAVAILABLE,
            )
        client = log_store_client_create(config)
        try:
            records = log_records_search(
                client=client,
                index_prefix=config.index_prefix,
                request_id=options["request_id"],
                trace_id=options["trace_id"],
                level=options["level"],
                since=since,
                limit=options["limit"],
            )
        except TransportError as exc:
            message = f"Elasticsearch at {config.display_url} is unreachable: {exc}"
            raise CommandError(message, returncode=UNAVAILABLE) from exc
        except ApiError as exc:
            raise CommandError(
                f"Elasticsearch at {config.display_url} refused the search: {exc.status_code} {exc.message}",
                returncode=UNAVAILABLE,
            ) from exc
        finally:
            client.close()
        for record in records:
            self.stdout.write(json.dumps(record, sort_keys=True))  # as the stdout lines are rendered
