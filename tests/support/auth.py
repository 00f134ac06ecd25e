"""Test helpers for accounts: grant the metrics permission the way ops do (the analysts group)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from accounts.models import TokenSession


def metrics_reader_grant(user: Any) -> Any:
    """Put ``user`` in the "analysts" group (recreated if a flush emptied the tables)."""
    content_type = ContentType.objects.get_for_model(TokenSession)
    permission, _ = Permission.objects.get_or_create(
        codename="read_metrics", content_type=content_type, defaults={"name": "Can read metrics"}
    )
    group, _ = Group.objects.get_or_create(name="analysts")
    group.permissions.add(permission)
    user.groups.add(group)
    # Django caches a user's permissions on the instance: a fresh copy sees the new group.
    return type(user).objects.get(pk=user.pk)
