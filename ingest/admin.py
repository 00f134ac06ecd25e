from __future__ import annotations

from django.contrib import admin

from ingest.models import AllowlistRule


@admin.register(AllowlistRule)
class AllowlistRuleAdmin(admin.ModelAdmin):
    list_display = ("cidr", "scope", "enabled", "note", "updated_at")
    list_editable = ("enabled",)
    list_filter = ("scope", "enabled")
    search_fields = ("cidr", "note")
    readonly_fields = ("created_at", "updated_at")
