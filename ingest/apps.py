from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save


def _allowlist_changed(sender: Any, **kwargs: Any) -> None:
    from ingest import allowlist

    allowlist.rules_invalidate()


def _write_keys_changed(sender: Any, **kwargs: Any) -> None:
    from ingest import write_keys

    write_keys.cache_clear()


class IngestConfig(AppConfig):
    name = "ingest"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ingest.models import AllowlistRule, WriteKey

        # A rule edited in the admin applies at once in this process (others within the cache TTL).
        post_save.connect(_allowlist_changed, sender=AllowlistRule, dispatch_uid="ingest-allowlist-save")
        post_delete.connect(_allowlist_changed, sender=AllowlistRule, dispatch_uid="ingest-allowlist-delete")
        post_save.connect(_write_keys_changed, sender=WriteKey, dispatch_uid="ingest-write-key-save")
        post_delete.connect(_write_keys_changed, sender=WriteKey, dispatch_uid="ingest-write-key-delete")
