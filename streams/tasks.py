"""Celery tasks of the streams capability: the retention of the player-error indices."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="streams.tasks.player_error_indices_prune")
def player_error_indices_prune_task() -> list[str] | None:
    """Delete the expired daily indices; None when player-error search is off."""
    from streams import error_search

    config = error_search.error_search_config_get()
    if config is None:
        return None
    client = error_search.error_search_client_create(config)
    try:
        return error_search.player_error_indices_prune(
            client=client, prefix=config.index_prefix, retention_days=config.retention_days
        )
    finally:
        client.close()
