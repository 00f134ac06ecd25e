from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import TokenSession
from accounts.services import sessions_revoke


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
