"""Admin for metric definitions: analysts add and edit metrics here, no deploy needed.

Saving compiles the definition (``MetricDefinition.clean``) and refuses one that does not compile;
the change page shows the last 24 hours of the saved definition through the same selector as the
API, so what the preview shows is what ``GET /metrics`` returns.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from analytics_platform import event_format
from analytics_platform.errors import ApplicationError
from metrics import query, units
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


def _measure_choices() -> list[tuple[str, Any]]:
    """Every measure, grouped by the source that has it (the form's compile step checks the pair)."""
    groups = [(source.label, [(m, m) for m in source.measures]) for source in query.SOURCES.values()]
    return [("", "(none: count rows)"), *groups]


def _condition_choices() -> list[tuple[str, Any]]:
    """Each flag and its negation (``!flag``), grouped by source: what ``conditions`` may hold."""
    return [
        (source.label, [item for flag in source.flags for item in ((flag, flag), (f"!{flag}", f"not {flag}"))])
        for source in query.SOURCES.values()
        if source.flags
    ]


class EventTypesField(forms.CharField):
    """Event types as a comma-separated list: the playback types are suggested, custom ones allowed."""

    def prepare_value(self, value: Any) -> Any:
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        bad = [item for item in items if item not in event_format.PLAYBACK_TYPES and not _CUSTOM_TYPE.match(item)]
        if bad:
            raise forms.ValidationError(f"not an event type: {', '.join(bad)}")
        return items


_CUSTOM_TYPE = re.compile(event_format.CUSTOM_TYPE_PATTERN)


class MetricDefinitionForm(forms.ModelForm):
    source = forms.ChoiceField(choices=query.source_choices)
    measure = forms.ChoiceField(choices=_measure_choices, required=False, help_text=_vocabulary_help())
    conditions = forms.MultipleChoiceField(
        choices=_condition_choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Rows counted only where every checked flag holds (for a ratio: the numerator's rows).",
    )
    event_types = EventTypesField(
        required=False,
        help_text="Comma-separated; empty: every type. Playback types: "
        + ", ".join(sorted(event_format.PLAYBACK_TYPES)),
    )
    denominator_measure = forms.ChoiceField(choices=_measure_choices, required=False)
    denominator_conditions = forms.MultipleChoiceField(
        choices=_condition_choices, required=False, widget=forms.CheckboxSelectMultiple
    )
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

    def get_urls(self) -> list[URLPattern]:
        preview = path(
            "preview/",
            self.admin_site.admin_view(self.live_preview_view),
            name="metrics_metricdefinition_live_preview",
        )
        return [preview, *super().get_urls()]

    def live_preview_view(self, request: HttpRequest) -> JsonResponse:
        """The change form's values, unsaved, answered as the last 24 hours (the live preview).

        The same form and compile step as saving, so a preview shows exactly what saving would
        refuse; the name is not checked (a new definition may not have one yet).
        """
        if request.method != "POST":
            return JsonResponse({"errors": {"__all__": ["POST the change form"]}}, status=405)
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            return JsonResponse({"errors": {"__all__": ["permission denied"]}}, status=403)
        data = request.POST.copy()
        data["name"] = _PREVIEW_NAME
        form = MetricDefinitionForm(data, instance=MetricDefinition())
        form.is_valid()
        errors = {field: list(messages) for field, messages in form.errors.items() if field != "name"}
        if errors:
            return JsonResponse({"errors": errors}, status=400)
        try:
            series = _last_24_hours(form.instance.compile())
        except (ApplicationError, query.QueryError) as exc:
            return JsonResponse({"errors": {"__all__": [str(exc)]}}, status=400)
        except Exception as exc:  # noqa: BLE001 - ClickHouse down: say so, like the saved preview
            return JsonResponse({"errors": {"__all__": [f"ClickHouse: {type(exc).__name__}: {exc}"]}}, status=503)
        unit = form.cleaned_data.get("unit") or ""
        points = series["points"]
        return JsonResponse(
            {
                "unit": unit,
                "x": [p["t"] for p in points],
                "y": [p["value"] for p in points],
                "hover": [units.value_format(p["value"], unit) for p in points],
                "ticks": units.axis_ticks(unit, [p["value"] for p in points]),
                "tickformat": units.axis_tickformat(unit, [p["value"] for p in points]),
                "total": series["total"],
                "totalText": units.value_format(series["total"], unit),
            }
        )

    @admin.display(description="Last 24 hours (hourly, UTC)")
    def preview(self, obj: MetricDefinition | None) -> SafeString | str:
        chart = format_html(
            '<div id="metric-live-preview" data-url="{}" style="width:640px;height:260px"></div>'
            '<p id="metric-live-preview-status" class="help">Edit the fields: the chart follows, before saving.</p>',
            reverse("admin:metrics_metricdefinition_live_preview"),
        )
        if obj is None or obj.pk is None:
            return chart
        try:
            series = _last_24_hours(obj.compile())
        except (ApplicationError, query.QueryError) as exc:
            return format_html("{}<p>Preview unavailable: {}</p>", chart, exc)
        except Exception as exc:  # noqa: BLE001 - a preview must never break the change page
            return format_html("{}<p>Preview unavailable (ClickHouse): {}: {}</p>", chart, type(exc).__name__, exc)
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td></tr>", ((p["t"], _fmt(p["value"])) for p in series["points"])
        )
        return format_html(
            "{}<details><summary>Saved definition</summary>"
            '<p id="metric-preview-total">Total: <strong>{}</strong> {}</p>'
            '<table id="metric-preview"><tr><th>hour (UTC)</th><th>value</th></tr>{}</table></details>',
            chart,
            _fmt(series["total"]),
            obj.unit,
            rows,
        )


#: The name a definition being previewed compiles under (never stored).
_PREVIEW_NAME = "unsaved_preview"


def _last_24_hours(compiled: query.CompiledMetric) -> query.Series:
    """One series: ``compiled`` over the last 24 whole hours, uncached, through the API's selector."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    body = metric_timeseries_get(
        metrics=(), definitions=[compiled], start=end - timedelta(hours=24), end=end, interval="hour", use_cache=False
    )
    return body["metrics"][0]["series"][0]


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
