"""Admin for metric definitions: analysts add and edit metrics here, no deploy needed.

Saving compiles the definition (``MetricDefinition.clean``) and refuses one that does not compile;
the change page shows the last 24 hours of the saved definition through the same selector as the
API, so what the preview shows is what ``GET /metrics`` returns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from analytics_platform.errors import ApplicationError
from metrics import query
from metrics.models import MetricDefinition
from metrics.selectors import metric_timeseries_get


def _vocabulary_help() -> str:
    """What each source offers, so analysts do not have to read code to fill the form."""
    lines = []
    for source in query.SOURCES.values():
        lines.append(
            f"{source.key}: measures {', '.join(source.measures)}; "
            f"flags {', '.join(source.flags) or '-'}; dimensions {', '.join(source.dimensions)}"
        )
    return " | ".join(lines)


class MetricDefinitionForm(forms.ModelForm):
    source = forms.ChoiceField(choices=query.source_choices)
    dimensions = forms.MultipleChoiceField(
        choices=[(d, d) for d in query.DIMENSIONS],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Empty: every dimension the source has.",
    )

    class Meta:
        model = MetricDefinition
        fields = (
            "name",
            "description",
            "unit",
            "source",
            "aggregation",
            "measure",
            "quantile",
            "conditions",
            "event_types",
            "numerator_aggregation",
            "denominator_aggregation",
            "denominator_measure",
            "denominator_conditions",
            "dimensions",
        )
        help_texts = {"measure": _vocabulary_help()}


@admin.register(MetricDefinition)
class MetricDefinitionAdmin(admin.ModelAdmin):
    form = MetricDefinitionForm
    list_display = ("name", "unit", "source", "aggregation", "builtin", "updated_at")
    list_filter = ("source", "aggregation", "builtin")
    search_fields = ("name", "description")
    readonly_fields = ("builtin", "created_at", "updated_at", "preview")
    fieldsets = (
        (None, {"fields": ("name", "description", "unit", "source", "builtin")}),
        ("Aggregation", {"fields": ("aggregation", "measure", "quantile", "conditions", "event_types")}),
        (
            "Ratio (aggregation = ratio): numerator uses measure/conditions above",
            {
                "fields": (
                    "numerator_aggregation",
                    "denominator_aggregation",
                    "denominator_measure",
                    "denominator_conditions",
                )
            },
        ),
        ("Dimensions", {"fields": ("dimensions",)}),
        ("Preview", {"fields": ("preview", "created_at", "updated_at")}),
    )

    @admin.display(description="Last 24 hours (hourly, UTC)")
    def preview(self, obj: MetricDefinition | None) -> SafeString | str:
        if obj is None or obj.pk is None:
            return "Save the definition to see a preview."
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        try:
            body: dict[str, Any] = metric_timeseries_get(
                metrics=[obj.name], start=end - timedelta(hours=24), end=end, interval="hour", use_cache=False
            )
        except (ApplicationError, query.QueryError) as exc:
            return f"Preview unavailable: {exc}"
        except Exception as exc:  # noqa: BLE001 - a preview must never break the change page
            return f"Preview unavailable (ClickHouse): {type(exc).__name__}: {exc}"
        series = body["metrics"][0]["series"][0]
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td></tr>", ((p["t"], _fmt(p["value"])) for p in series["points"])
        )
        return format_html(
            '<p id="metric-preview-total">Total: <strong>{}</strong> {}</p>'
            '<table id="metric-preview"><tr><th>hour (UTC)</th><th>value</th></tr>{}</table>',
            _fmt(series["total"]),
            obj.unit,
            rows,
        )


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
