"""The overview's "worst contributors": each value's points lost add up to the overall shortfall."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from metrics.selectors import metric_timeseries_get
from metrics.views import worst_contributors
from tests.metrics import data as gen
from tests.metrics.conftest import dataset_base

pytestmark = [pytest.mark.clickhouse, pytest.mark.django_db(databases=["default", "clickhouse"])]

START, END = dataset_base(), dataset_base() + timedelta(days=3)


@pytest.mark.parametrize("dim", ["country", "device", "videoId"])
def test_points_lost_add_up_to_the_overall_shortfall(loaded: gen.Dataset, dim: str) -> None:
    _, score_of, _ = gen.TRUTH["viewer_experience_score"]
    overall = score_of([v for v in loaded.views if START <= v["start_ts"] < END])
    body = metric_timeseries_get(
        metrics=["views", "viewer_experience_score"], start=START, end=END, group_by=[dim], limit=1000
    )
    everyone = worst_contributors(body, dim, shown=1000)
    assert math.isclose(sum(r["points_lost"] for r in everyone), 100 - overall, rel_tol=1e-9)
    lost = [r["points_lost"] for r in everyone]
    assert lost == sorted(lost, reverse=True) and len(everyone) > 1
    worst = everyone[0]
    column = gen.API_TO_COL[dim]
    rows = [v for v in loaded.views if START <= v["start_ts"] < END and (v[column] or "(none)") == worst["value"]]
    views = sum(1 for v in rows if v["has_view_start"])
    assert worst["views"] == views
    assert math.isclose(worst["score"], score_of(rows), rel_tol=1e-9)
    assert worst_contributors(body, dim) == everyone[:5]


def test_the_overview_lists_them(loaded: gen.Dataset, staff_user: Any) -> None:
    client = Client()
    client.force_login(staff_user)
    page = client.get("/dashboards/", {"from": START.isoformat(), "to": END.isoformat(), "breakdown": "device"})
    assert page.status_code == 200
    rows = page.context["contributors"]
    assert 1 <= len(rows) <= 5
    assert b'id="worst-contributors"' in page.content and rows[0]["value"].encode() in page.content
