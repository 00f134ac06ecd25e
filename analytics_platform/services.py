"""Operator-facing actions of the platform itself (bootstrap of a fresh installation)."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model


def admin_user_ensure(*, username: str, password: str | None) -> str | None:
    """Create the superuser ``username`` if it does not exist.

    Returns the password when one was generated (to be shown once), otherwise None. An existing
    user is left untouched, so a restart never rotates a password someone already uses.
    """
    user_model = get_user_model()
    if user_model.objects.filter(username=username).exists():
        return None
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(16)
    user_model.objects.create_superuser(username=username, email="", password=password)
    return generated
