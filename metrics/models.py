"""Metric definitions: what analysts add and edit in the admin, without a deploy.

A definition only *names* things (a source, measures, flags, dimensions); ``metrics.query`` owns
the identifiers those names map to. ``clean()`` compiles the definition, so a definition that the
query builder cannot turn into SQL is never saved.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from metrics import query

AGGREGATION_CHOICES = [
    ("count", "count of rows"),
    ("uniq", "distinct count of a measure"),
    ("sum", "sum of a measure"),
    ("avg", "average of a measure"),
    ("quantile", "quantile of a measure"),
    ("ratio", "ratio of two aggregations"),
]
RATIO_PART_CHOICES = [(key, label) for key, label in AGGREGATION_CHOICES if key in query.RATIO_PARTS]


def _string_list(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("must be a JSON list of strings")
    return tuple(value)


class MetricDefinition(models.Model):
    name = models.CharField(max_length=64, unique=True, help_text="Name used in GET /metrics?metric=…")
    description = models.TextField(blank=True)
    unit = models.CharField(max_length=32, blank=True, help_text="e.g. count, ms, ratio, users")
    source = models.CharField(
        max_length=64,
        help_text="Raw events, view summaries (one row per view, bucketed at the view's start), or a rollup.",
    )
    aggregation = models.CharField(max_length=16, choices=AGGREGATION_CHOICES)
    measure = models.CharField(
        max_length=64, blank=True, help_text="Column aggregated (for a ratio: the numerator's). Empty for count."
    )
    quantile = models.FloatField(null=True, blank=True, help_text="Level for quantile, e.g. 0.95")
    conditions = models.JSONField(
        default=list,
        blank=True,
        help_text='Flags that must hold (for a ratio: on the numerator), e.g. ["started"] or ["!failed"].',
    )
    event_types = models.JSONField(
        default=list, blank=True, help_text='Only events of these types, e.g. ["view_start"]. Empty: all.'
    )
    numerator_aggregation = models.CharField(max_length=16, choices=RATIO_PART_CHOICES, blank=True)
    denominator_aggregation = models.CharField(max_length=16, choices=RATIO_PART_CHOICES, blank=True)
    denominator_measure = models.CharField(max_length=64, blank=True)
    denominator_conditions = models.JSONField(default=list, blank=True)
    dimensions = models.JSONField(
        default=list,
        blank=True,
        help_text="Dimensions it may be grouped and filtered by. Empty: every dimension of the source.",
    )
    builtin = models.BooleanField(default=False, editable=False, help_text="Created by the data migration.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def spec(self) -> query.MetricSpec:
        return query.MetricSpec(
            name=self.name,
            source=self.source,
            aggregation=self.aggregation,
            measure=self.measure,
            quantile=self.quantile,
            conditions=_string_list(self.conditions),
            event_types=_string_list(self.event_types),
            numerator_aggregation=self.numerator_aggregation,
            denominator_aggregation=self.denominator_aggregation,
            denominator_measure=self.denominator_measure,
            denominator_conditions=_string_list(self.denominator_conditions),
            dimensions=_string_list(self.dimensions),
            unit=self.unit,
        )

    def compile(self) -> query.CompiledMetric:
        return query.metric_compile(self.spec())

    def clean(self) -> None:
        """Refuse a definition the query builder cannot compile, naming the field at fault."""
        super().clean()
        for name in ("conditions", "event_types", "denominator_conditions", "dimensions"):
            try:
                _string_list(getattr(self, name))
            except ValidationError as exc:
                raise ValidationError({name: exc.messages}) from exc
        try:
            self.compile()
        except query.QueryError as exc:
            field = exc.field if exc.field in {f.name for f in self._meta.fields} else None
            raise ValidationError({field: exc.message} if field else exc.message) from exc
