"""A password change ends every token session of the user (whoever changed it, however)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from accounts.models import TokenSession


@receiver(pre_save, sender=get_user_model())
def _password_change_note(sender: Any, instance: Any, update_fields: Any = None, **_: Any) -> None:
    # Every path (admin form, changepassword, set_password + save) ends in save(): compare the hash
    # with the stored one here, revoke after the save has succeeded.
    instance._password_changed = False
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._password_changed = stored is not None and stored != instance.password


@receiver(post_save, sender=get_user_model())
def _password_change_revoke(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    if getattr(instance, "_password_changed", False):
        from accounts.services import user_sessions_revoke

        user_sessions_revoke(user_id=instance.pk, reason=TokenSession.Reason.PASSWORD_CHANGE)
