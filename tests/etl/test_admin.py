"""Export runs are visible in the admin, filterable by status, table and day."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model

from etl.models import ExportRun

pytestmark = [pytest.mark.django_db]


def test_export_runs_are_listed_and_filtered_in_the_admin(client):
    admin = get_user_model().objects.create_superuser(username="ops", email="", password="x")
    client.force_login(admin)
    ExportRun.objects.create(
        table="events", day=dt.date(2026, 11, 1), destination="bigquery:p.d.events", status="succeeded", rows=42
    )
    ExportRun.objects.create(
        table="view_summaries", day=dt.date(2026, 11, 1), destination="x", status="failed", error="boom"
    )
    response = client.get("/admin/etl/exportrun/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "bigquery:p.d.events" in body and "view_summaries" in body
    failed = client.get("/admin/etl/exportrun/", {"status__exact": "failed"}).content.decode()
    assert "1 result" in failed and "2 total" in failed
    assert client.get("/admin/etl/partitionlease/").status_code == 200
