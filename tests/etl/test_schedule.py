"""The beat schedule itself: just after midnight UTC, beat enqueues the export of the closed day.

Celery beat's own ``Scheduler`` runs over the real ``CELERY_BEAT_SCHEDULE`` from settings with a
clock we move by hand; the messages it publishes on an in-memory broker are then consumed as a
worker would, and the export messages they fan out to are read back from the broker.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from celery import Celery, beat, current_app
from django.conf import settings as django_settings

import etl.tasks  # noqa: F401 -- registers the shared tasks on every app, like autodiscovery does
from etl.models import ExportRun
from etl.tables import Partition, previous_closed_day, previous_closed_hour

pytestmark = [pytest.mark.django_db(databases=["default"])]


@pytest.fixture
def beat_app():
    previous = current_app._get_current_object()
    app = Celery("etl-beat-test", set_as_current=True)
    app.conf.update(
        broker_url="memory://",
        beat_schedule=django_settings.CELERY_BEAT_SCHEDULE,
        timezone="UTC",
        enable_utc=True,
        task_default_queue=f"beat-test-{uuid.uuid4().hex}",
    )
    app.loader.import_default_modules()
    yield app
    previous.set_current()


def _drain(app) -> list[tuple[str, list, dict]]:
    messages = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(app.conf.task_default_queue)
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            args, kwargs, _ = message.payload
            messages.append((message.headers["task"], list(args), dict(kwargs)))
            message.ack()
        queue.close()
    return messages


def _run_beat(app, clock: list[dt.datetime], times: list[dt.datetime]) -> list[list[tuple[str, list, dict]]]:
    app.now = lambda: clock[0]
    scheduler = beat.Scheduler(app, lazy=False)
    sent = []
    for moment in times:
        clock[0] = moment
        while scheduler.tick() == 0:  # 0: it applied an entry and wants to be called again
            pass
        sent.append([message for message in _drain(app) if message[0].startswith("etl.")])
    return sent


def test_beat_enqueues_the_closed_day_just_after_midnight_utc(beat_app):
    today = dt.datetime.now(dt.UTC).date()
    midnight = dt.datetime.combine(today, dt.time(0), tzinfo=dt.UTC)
    clock = [midnight - dt.timedelta(minutes=20)]
    before, just_before, after, later = _run_beat(
        beat_app,
        clock,
        [
            midnight - dt.timedelta(minutes=10),
            midnight + dt.timedelta(minutes=14, seconds=59),
            midnight + dt.timedelta(minutes=15, seconds=1),
            midnight + dt.timedelta(hours=3),
        ],
    )
    assert before == [] and just_before == []
    assert after == [("etl.tasks.export_closed_days", [], {})]
    assert later == []  # once a day

    # Earlier days were exported on their own nights; the task fans out to yesterday only.
    yesterday = today - dt.timedelta(days=1)
    for table in ("events", "view_summaries"):
        for back in range(2, 5):
            ExportRun.objects.create(
                table=table, day=today - dt.timedelta(days=back), destination="x", status=ExportRun.Status.SUCCEEDED
            )
    beat_app.tasks["etl.tasks.export_closed_days"].apply()
    exports = _drain(beat_app)
    assert sorted(exports) == [
        ("etl.tasks.export_partition", ["events", yesterday.isoformat()], {}),
        ("etl.tasks.export_partition", ["view_summaries", yesterday.isoformat()], {}),
    ]


def test_a_missed_night_is_caught_up_by_the_next_one(beat_app, settings):
    settings.ETL_CATCHUP_DAYS = 3
    today = dt.datetime.now(dt.UTC).date()
    # Only the day before yesterday's night ran (the day three days ago); two days are missing.
    for table in ("events", "view_summaries"):
        ExportRun.objects.create(
            table=table, day=today - dt.timedelta(days=3), destination="x", status=ExportRun.Status.SUCCEEDED
        )
    beat_app.tasks["etl.tasks.export_closed_days"].apply()
    days = sorted({args[1] for _, args, _ in _drain(beat_app)})
    assert days == [(today - dt.timedelta(days=2)).isoformat(), (today - dt.timedelta(days=1)).isoformat()]


def test_an_export_right_after_midnight_is_redone_the_next_night(beat_app, settings):
    # Views that start before midnight close after the 00:15 export: that export is provisional,
    # and the next night's run replaces the day once more; after that the day is final.
    settings.ETL_CATCHUP_DAYS = 2
    settings.ETL_SETTLE_SECONDS = 6 * 3600
    today = dt.datetime.now(dt.UTC).date()
    day_before = today - dt.timedelta(days=2)
    midnight_after = dt.datetime.combine(day_before + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    for table in ("events", "view_summaries"):
        run = ExportRun.objects.create(table=table, day=day_before, destination="x", status=ExportRun.Status.SUCCEEDED)
        ExportRun.objects.filter(pk=run.pk).update(started_at=midnight_after + dt.timedelta(minutes=15))
    beat_app.tasks["etl.tasks.export_closed_days"].apply()
    days = sorted({args[1] for _, args, _ in _drain(beat_app)})
    assert days == [day_before.isoformat(), (today - dt.timedelta(days=1)).isoformat()]
    # Its second export, a day later, is final: the following night leaves the day alone.
    ExportRun.objects.filter(day=day_before).update(started_at=midnight_after + dt.timedelta(days=1, minutes=15))
    beat_app.tasks["etl.tasks.export_closed_days"].apply()
    days = sorted({args[1] for _, args, _ in _drain(beat_app)})
    assert days == [(today - dt.timedelta(days=1)).isoformat()]


def test_closed_day_and_hour_arithmetic_is_utc():
    just_after_midnight = dt.datetime(2026, 3, 29, 0, 0, 1, tzinfo=dt.UTC)
    assert previous_closed_day(just_after_midnight) == dt.date(2026, 3, 28)
    paris = dt.timezone(dt.timedelta(hours=2))
    assert previous_closed_day(dt.datetime(2026, 3, 29, 1, 30, tzinfo=paris)) == dt.date(2026, 3, 27)
    assert previous_closed_hour(just_after_midnight) == Partition(day=dt.date(2026, 3, 28), hour=23)
    assert Partition(day=dt.date(2026, 3, 28), hour=23).end == dt.datetime(2026, 3, 29, tzinfo=dt.UTC)
    assert not Partition(day=dt.date(2026, 3, 29)).is_closed(just_after_midnight)
