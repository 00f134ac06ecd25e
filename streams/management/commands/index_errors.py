"""``manage.py index_errors``: the player-error indexer (``streams/error_indexer.py``) until SIGTERM."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Consume video-error and events-dlq and bulk-index them into Elasticsearch (ELASTICSEARCH_ERRORS_URL). "
        "Exits 1 when Elasticsearch stays unavailable through ELASTICSEARCH_ERRORS_RETRIES retries."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        from streams.error_indexer import Indexer, indexer_config_get

        config = indexer_config_get()
        if config is None:
            raise CommandError("player-error search is off: set ELASTICSEARCH_ERRORS_URL")
        sys.exit(Indexer(config).run())
