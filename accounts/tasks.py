"""Celery tasks of the accounts capability."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="accounts.tasks.token_sessions_prune")
def token_sessions_prune_task() -> int:
    """Daily (beat): delete the token sessions whose refresh token has expired."""
    from accounts.services import token_sessions_prune

    return token_sessions_prune()
