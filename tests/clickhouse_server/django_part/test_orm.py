"""django-clickhouse-backend through the embedded server: run by test_django.py in a subprocess.

pytest-django creates the ``test_...`` ClickHouse database and applies the app's migration at
session start, and drops the database at the end.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connections
from django.db.models import Avg, Count, Max, Q, Sum

from tests.clickhouse_server.chapp.models import VideoView

pytestmark = pytest.mark.django_db(databases=["default", "clickhouse"], transaction=True)

START = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
COUNTRIES = ["DE", "FR", "US"]


def _views(n: int) -> list[VideoView]:
    return [
        VideoView(
            video_id=i % 5,
            country=COUNTRIES[i % 3],
            watched_seconds=i,
            completed=i % 4 == 0,
            started_at=START + dt.timedelta(minutes=i),
        )
        for i in range(n)
    ]


def test_runs_against_the_test_database() -> None:
    name = connections["clickhouse"].settings_dict["NAME"]
    assert name.startswith("test_")
    with connections["clickhouse"].cursor() as cursor:
        cursor.execute("SELECT currentDatabase()")
        assert cursor.fetchone() == (name,)


def test_bulk_create_filter_and_values() -> None:
    VideoView.objects.bulk_create(_views(3000), batch_size=1000)

    assert VideoView.objects.count() == 3000
    assert VideoView.objects.filter(country="DE", watched_seconds__gte=1500).count() == 500
    assert VideoView.objects.filter(Q(video_id=1) | Q(completed=True)).count() == 600 + 750 - 150
    first = VideoView.objects.filter(video_id=2).order_by("started_at").first()
    assert first is not None and first.started_at == START + dt.timedelta(minutes=2)
    assert first.country == "US" and first.watched_seconds == 2


def test_group_by_annotate_and_aggregate() -> None:
    VideoView.objects.bulk_create(_views(300))

    per_country = list(
        VideoView.objects.values("country")
        .annotate(views=Count("id"), seconds=Sum("watched_seconds"), longest=Max("watched_seconds"))
        .order_by("country")
    )
    totals = VideoView.objects.aggregate(avg=Avg("watched_seconds"), views=Count("id"))

    assert per_country == [
        {"country": "DE", "views": 100, "seconds": sum(range(0, 300, 3)), "longest": 297},
        {"country": "FR", "views": 100, "seconds": sum(range(1, 300, 3)), "longest": 298},
        {"country": "US", "views": 100, "seconds": sum(range(2, 300, 3)), "longest": 299},
    ]
    assert totals == {"avg": 149.5, "views": 300}


def test_update_and_delete_mutations() -> None:
    VideoView.objects.bulk_create(_views(30))

    VideoView.objects.filter(country="FR").update(completed=True)
    VideoView.objects.filter(video_id=0).delete()

    expected = sum(1 for i in range(30) if i % 5 != 0 and (i % 4 == 0 or COUNTRIES[i % 3] == "FR"))
    assert VideoView.objects.filter(completed=True).count() == expected
    assert not VideoView.objects.filter(video_id=0).exists()
