"""Read-only admin for export runs: operators filter by table, status and day to see gaps."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from etl.models import ExportRun, PartitionLease


@admin.register(ExportRun)
class ExportRunAdmin(admin.ModelAdmin):
    list_display = (
        "table",
        "day",
        "hour",
        "status",
        "rows",
        "bytes",
        "duration_seconds",
        "attempt",
        "destination",
        "started_at",
    )
    list_filter = ("status", "table", "destination", ("day", admin.DateFieldListFilter))
    date_hierarchy = "day"
    search_fields = ("table", "destination", "error", "task_id")
    readonly_fields = [field.name for field in ExportRun._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ExportRun | None = None) -> bool:
        return False


@admin.register(PartitionLease)
class PartitionLeaseAdmin(admin.ModelAdmin):
    list_display = ("key", "owner", "expires_at")
    search_fields = ("key",)
