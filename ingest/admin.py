from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone

from ingest import allowlist, write_keys
from ingest.models import AllowlistRule, WriteKey, origins_parse


@admin.register(AllowlistRule)
class AllowlistRuleAdmin(admin.ModelAdmin):
    list_display = ("cidr", "scope", "enabled", "note", "updated_at")
    list_editable = ("enabled",)
    list_filter = ("scope", "enabled", "updated_at")
    search_fields = ("cidr", "note")
    readonly_fields = ("created_at", "updated_at")

    def get_urls(self) -> list[URLPattern]:
        test = path(
            "test-address/",
            self.admin_site.admin_view(self.test_address_view),
            name="ingest_allowlistrule_test_address",
        )
        return [test, *super().get_urls()]

    def test_address_view(self, request: HttpRequest) -> HttpResponse:
        """Each scope's answer for an address (and the rule or built-in that matched), beside the
        effective rules of every scope: what the allowlist does now, not what the list suggests."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        address = request.GET.get("address", "").strip()[:100]
        decisions: list[allowlist.ScopeDecision] = []
        error = ""
        if address:
            try:
                decisions = allowlist.address_explain(ip=address)
            except ValueError:
                error = f"{address!r} is not an IPv4 or IPv6 address"
        effective = allowlist.rules_effective()
        context: dict[str, Any] = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Test an address against the allowlist",
            "address": address,
            "error": error,
            "decisions": decisions,
            "scopes": [
                {"scope": scope, "enabled": allowlist.scope_enabled(scope), "entries": effective[scope]}
                for scope in allowlist.SCOPES
            ],
            "switches": allowlist.SCOPE_SWITCHES,
        }
        return TemplateResponse(request, "admin/ingest/allowlistrule/test_address.html", context)


class _RevokedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[WriteKey]) -> QuerySet[WriteKey]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(WriteKey)
class WriteKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "origins", "rate_limit_requests", "revoked_at", "created_at")
    list_filter = (_RevokedFilter, "created_at")
    search_fields = ("name", "key", "allowed_origins")
    readonly_fields = ("key", "snippet", "revoked_at", "created_at", "updated_at")
    fields = ("name", "key", "allowed_origins", "rate_limit_requests", "snippet", "revoked_at", "created_at")
    actions = ["revoke"]

    @admin.display(description="allowed origins")
    def origins(self, obj: WriteKey) -> str:
        return ", ".join(origins_parse(obj.allowed_origins))

    @admin.display(description="SDK snippet")
    def snippet(self, obj: WriteKey) -> str:
        if not obj.pk:
            return "(saved keys show the snippet to paste into the site)"
        endpoint = settings.INGEST_PUBLIC_URL.rstrip("/") + "/events"
        return f'VideoAnalytics.createTracker({{ endpoint: "{endpoint}", writeKey: "{obj.key}" }})'

    @admin.action(description="Revoke the selected write keys (their requests are refused at once)")
    def revoke(self, request: HttpRequest, queryset: QuerySet[WriteKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        write_keys.cache_clear()  # update() sends no post_save
        self.message_user(request, f"Revoked {count} write key(s).")
