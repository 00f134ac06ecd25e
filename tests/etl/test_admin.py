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


def test_export_runs_are_exported_again_from_the_admin(client):
    """The action queues one export_partition task per distinct partition, on a real (memory) broker."""
    from celery import Celery, current_app
    from django.contrib.auth.models import Permission

    ops = get_user_model().objects.create_user(username="ops", password="x", is_staff=True)
    ops.user_permissions.add(Permission.objects.get(codename="view_exportrun"))
    client.force_login(ops)
    day = dt.date(2026, 11, 1)
    runs = [
        ExportRun.objects.create(table="events", day=day, destination="x", status="failed", error="boom"),
        ExportRun.objects.create(table="events", day=day, destination="x", status="failed", error="boom again"),
        ExportRun.objects.create(table="view_summaries", day=day, hour=7, destination="x", status="failed"),
    ]
    form = {"action": "export_again", "_selected_action": [r.pk for r in runs]}
    # Without the change permission the action is not offered (nothing queued, no message).
    assert "Queued" not in client.post("/admin/etl/exportrun/", form, follow=True).content.decode()
    ops.user_permissions.add(Permission.objects.get(codename="change_exportrun"))

    previous = current_app._get_current_object()
    app = Celery("etl-admin-tests", set_as_current=True)
    app.conf.broker_url = "memory://"
    sent = []
    try:
        with app.connection_for_write() as connection:
            queue = connection.SimpleQueue("celery")
            response = client.post("/admin/etl/exportrun/", form, follow=True)
            assert "Queued 2 partition export(s): events 2026-11-01, view_summaries 2026-11-01 07h" in (
                response.content.decode()
            )
            while True:
                try:
                    message = queue.get(timeout=0.5)
                except queue.Empty:
                    break
                sent.append((message.headers["task"], tuple(message.payload[0])))
                message.ack()
            queue.close()
    finally:
        app.close()
        previous.set_current()
    assert sorted(sent, key=str) == [
        ("etl.tasks.export_partition", ("events", "2026-11-01", None)),
        ("etl.tasks.export_partition", ("view_summaries", "2026-11-01", 7)),
    ]
    assert ExportRun.objects.count() == 3  # history untouched: the task writes the new runs
