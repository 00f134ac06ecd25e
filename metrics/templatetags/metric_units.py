from __future__ import annotations

from django import template

from metrics.units import value_format

register = template.Library()


@register.filter
def metric_value(value: float | None, unit: str) -> str:
    return value_format(value, unit)
