"""How the dashboards write a metric's value for people: the one place for units on screen.

The API keeps raw numbers (milliseconds, ratios in [0, 1]); a page shows watch time as
``45 h 36 min``, a failure rate as ``2.31 %`` and a million views as ``1.2M``.
"""

from __future__ import annotations

import math

from metrics.models import MetricDefinition

_ABBREVIATIONS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))
#: Counts below this are written in full (with thousands separators), above it abbreviated.
ABBREVIATE_FROM = 10_000


def duration_format(ms: float) -> str:
    if round(ms) < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if round(seconds, 1) < 60:  # 59.97 s reads "1 min 0 s", not "60.0 s"
        return f"{seconds:.1f} s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours:,} h {minutes} min"
    return f"{minutes} min {secs} s"


# Steps a duration axis may use: whole seconds, minutes and hours, so ticks read "30 s", "2 min 0 s".
_DURATION_STEPS_MS = tuple(
    [m * 10**e for e in range(0, 3) for m in (1, 2, 5)]
    + [s * 1000 for s in (1, 2, 5, 10, 15, 30)]
    + [m * 60_000 for m in (1, 2, 5, 10, 15, 30)]
    + [h * 3_600_000 for h in (1, 2, 3, 6, 12, 24, 48, 96, 168, 336, 720, 1440, 2880, 8760)]
)


def axis_ticks(unit: str, values: list[float | int | None], *, most: int = 6) -> dict[str, list] | None:
    """Tick positions and labels of a chart's value axis, for units plotly cannot write itself.

    Durations (``ms``) get ticks at whole seconds, minutes or hours labelled by ``duration_format``
    (plotly would print 164M); other units return None and keep plotly's own ticks.
    """
    if unit != "ms":
        return None
    top = max((v for v in values if v is not None and math.isfinite(v)), default=0)
    if top <= 0:
        return None
    step = next((s for s in _DURATION_STEPS_MS if top / s <= most - 1), _DURATION_STEPS_MS[-1])
    positions = [step * i for i in range(int(top // step) + 2)]
    return {"values": positions, "labels": [duration_format(p) for p in positions]}


def axis_tickformat(unit: str, values: list[float | int | None]) -> str:
    """plotly's tick format for a value axis without ``axis_ticks``: ratios as %, large values
    abbreviated (12k), small ones as decimals (SI would write 0.08 as "80m")."""
    if unit == "ratio":
        return ".1%"
    top = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0)
    return "~s" if top >= 1000 else ",.3~r"


def count_format(value: float) -> str:
    if abs(value) < ABBREVIATE_FROM:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    for size, suffix in _ABBREVIATIONS:
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.1f}{suffix}" if abs(scaled) < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:,.0f}"  # pragma: no cover - ABBREVIATE_FROM is above the smallest size


def value_format(value: float | None, unit: str) -> str:
    """``value`` in ``unit`` (a MetricDefinition's) as shown on the dashboards; an em dash for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if unit == "ms":
        return duration_format(value)
    if unit == "ratio":
        return f"{value * 100:.2f} %"
    if unit == "score":  # 0 to 100
        return f"{value:.1f}"
    text = count_format(value)
    return text if unit in ("count", "") else f"{text} {unit}"


def formula_describe(definition: MetricDefinition) -> str:
    """The definition's computation in one line, from its fields (what the query builder runs)."""

    def part(aggregation: str, measure: str, conditions: object) -> str:
        text = f"{aggregation}({measure or '*'})"
        if conditions:
            text += " where " + " and ".join(str(c) for c in conditions)  # type: ignore[attr-defined]
        return text

    if definition.aggregation == "ratio":
        numerator = part(definition.numerator_aggregation, definition.measure, definition.conditions)
        denominator = part(
            definition.denominator_aggregation, definition.denominator_measure, definition.denominator_conditions
        )
        text = f"{numerator} / {denominator}"
    elif definition.aggregation == "quantile":
        text = part(f"quantile({definition.quantile})", definition.measure, definition.conditions)
    else:
        text = part(definition.aggregation, definition.measure, definition.conditions)
    if definition.event_types:
        text += " for events of type " + ", ".join(definition.event_types)
    return f"{text} over {definition.source}"
