"""Admin for export runs: operators filter by table, status and day to see gaps, and export again.

Runs are read-only history (a retry is a new row); the one thing to do with them is to queue the
partitions they name for another export, which the task's partition lease keeps from running twice.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from etl.models import ExportRun, PartitionLease
from etl.tasks import export_partition


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
    actions = ["export_again"]

    @admin.action(description="Export the selected runs' partitions again", permissions=["export"])
    def export_again(self, request: HttpRequest, queryset: QuerySet[ExportRun]) -> None:
        partitions = sorted(set(queryset.values_list("table", "day", "hour")), key=lambda p: (p[0], p[1], p[2] or -1))
        for table, day, hour in partitions:
            export_partition.delay(table, day.isoformat(), hour)
        self.message_user(
            request,
            f"Queued {len(partitions)} partition export(s): " + ", ".join(_label(*p) for p in partitions[:10]),
            messages.SUCCESS,
        )

    def has_export_permission(self, request: HttpRequest) -> bool:
        # Exports write to BigQuery: only for whoever holds the model's change permission (the
        # admin's rows stay read-only all the same, see has_change_permission), and superusers.
        return bool(request.user.has_perm("etl.change_exportrun"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ExportRun | None = None) -> bool:
        return False


@admin.register(PartitionLease)
class PartitionLeaseAdmin(admin.ModelAdmin):
    list_display = ("key", "owner", "expires_at")
    search_fields = ("key",)


def _label(table: str, day: object, hour: int | None) -> str:
    return f"{table} {day}" + ("" if hour is None else f" {hour:02d}h")
