from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from ingest import allowlist
from ingest.models import AllowlistRule


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
