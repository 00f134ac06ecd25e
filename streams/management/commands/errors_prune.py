"""``manage.py errors_prune``: delete the player-error indices older than the retention (also a daily beat task)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Delete the daily player-error indices older than ELASTICSEARCH_ERRORS_RETENTION_DAYS."

    def handle(self, *args: Any, **options: Any) -> None:
        from streams.tasks import player_error_indices_prune_task

        deleted = player_error_indices_prune_task()
        if deleted is None:
            raise CommandError("player-error search is off: set ELASTICSEARCH_ERRORS_URL")
        for name in deleted:
            self.stdout.write(f"deleted {name}")
