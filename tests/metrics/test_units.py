"""The dashboards' units on plain values (metrics/units.py)."""

from __future__ import annotations

import pytest

from metrics.units import axis_tickformat, axis_ticks, count_format, duration_format, value_format


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0 ms"),
        (999.4, "999 ms"),
        (999.6, "1.0 s"),
        (1_500, "1.5 s"),
        (59_970, "1 min 0 s"),
        (185_000, "3 min 5 s"),
        (164_184_053, "45 h 36 min"),  # the watch time
        (10**15, "277,777,777 h 46 min"),
    ],
)
def test_durations_in_h_min_s(ms: float, text: str) -> None:
    assert duration_format(ms) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [(7, "7"), (9_999, "9,999"), (10_000, "10.0k"), (164_184_053, "164M"), (2.5e9, "2.5B"), (12.345, "12.35")],
)
def test_large_counts_abbreviated(value: float, text: str) -> None:
    assert count_format(value) == text


def test_values_by_unit() -> None:
    assert value_format(0.02314, "ratio") == "2.31 %"
    assert value_format(None, "ratio") == "—"
    assert value_format(float("nan"), "ms") == "—"
    assert value_format(12_345, "users") == "12.3k users"
    assert value_format(164_184_053, "ms") == "45 h 36 min"


@pytest.mark.parametrize(
    ("values", "labels"),
    [
        ([164_184_053, None, 3_600_000], ["0 ms", "12 h 0 min", "24 h 0 min", "36 h 0 min", "48 h 0 min"]),
        ([90_000], ["0 ms", "30.0 s", "1 min 0 s", "1 min 30 s", "2 min 0 s"]),
        ([450], ["0 ms", "100 ms", "200 ms", "300 ms", "400 ms", "500 ms"]),
    ],
)
def test_duration_axes_tick_at_whole_units(values: list[float | None], labels: list[str]) -> None:
    ticks = axis_ticks("ms", values)
    assert ticks is not None and ticks["labels"] == labels
    # The ticks cover the largest value and stay few.
    assert ticks["values"][-1] >= max(v for v in values if v is not None) and len(ticks["values"]) <= 7


def test_other_units_keep_plotlys_ticks() -> None:
    assert axis_ticks("count", [10, 20]) is None
    assert axis_ticks("ms", [None, 0]) is None


def test_axis_formats_abbreviate_large_values_only() -> None:
    assert axis_tickformat("ratio", [0.1]) == ".1%"
    assert axis_tickformat("per min", [0.08, None, float("nan")]) == ",.3~r"  # not "80m"
    assert axis_tickformat("count", [12_000]) == "~s"  # 12k
    assert axis_tickformat("score", []) == ",.3~r"


def test_scores_read_as_points_out_of_100() -> None:
    assert value_format(67.849, "score") == "67.8"
    assert value_format(0.0812, "per min") == "0.08 per min"
