"""Token sessions: one per ``POST /auth/token``, named by the ``sid`` claim of its tokens.

A session holds the id (``jti``) of the one refresh token that may still be exchanged. Refreshing
swaps it for the new token's (rotation); presenting any other refresh token of the session means
an old one was kept by someone, so the whole session is revoked (reuse detection, OAuth 2.1 BCP
section 4.14). Access tokens carry the ``sid`` too and are refused once their session is revoked,
so logout, a password change or an admin's revoke end them at once, not when they expire.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

#: The permission that lets a user read metrics (GET /metrics, the dashboards): granted to the
#: "analysts" group by a data migration, and to whoever ops add in the admin.
READ_METRICS = "accounts.read_metrics"


class TokenSession(models.Model):
    class Reason(models.TextChoices):
        LOGOUT = "logout", "Logged out"
        PASSWORD_CHANGE = "password_change", "Password changed"
        ADMIN = "admin", "Revoked by an admin"
        REUSE = "reuse", "Rotated refresh token reused"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name="session id (sid)")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="token_sessions")
    refresh_jti = models.CharField(max_length=64, help_text="The refresh token of this session that may be used.")
    client_ip = models.CharField(max_length=64, blank=True, help_text="Address that obtained the session.")
    created_at = models.DateTimeField(auto_now_add=True)
    refreshed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(db_index=True, help_text="When its current refresh token expires.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=32, choices=Reason.choices, blank=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("read_metrics", "Can read metrics (GET /metrics, dashboards)")]

    def __str__(self) -> str:
        return f"{self.user} {self.id}"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
