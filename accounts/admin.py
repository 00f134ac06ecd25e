from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import TokenSession
from accounts.services import sessions_revoke, user_sessions_revoke


@admin.register(TokenSession)
class TokenSessionAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "id",
        "client_ip",
        "created_at",
        "refreshed_at",
        "expires_at",
        "revoked_at",
        "revoked_reason",
    )
    list_filter = ("revoked_reason", ("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("user__username", "user__email", "id", "client_ip")
    readonly_fields = [f.name for f in TokenSession._meta.fields]
    actions = ["revoke"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # sessions come from POST /auth/token only

    @admin.action(description="Revoke selected sessions (their tokens stop working at once)", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = sessions_revoke(session_ids=queryset.values("pk"), reason=TokenSession.Reason.ADMIN)
        self.message_user(request, f"{count} session(s) revoked.", messages.SUCCESS)


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class AccountUserAdmin(UserAdmin):
    """Django's user admin plus revoking every token session of the selected users."""

    actions = ["token_sessions_revoke"]

    @admin.action(description="Revoke all API token sessions of selected users", permissions=["change"])
    def token_sessions_revoke(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = sum(
            user_sessions_revoke(user_id=pk, reason=TokenSession.Reason.ADMIN)
            for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(request, f"{count} session(s) revoked.", messages.SUCCESS)
