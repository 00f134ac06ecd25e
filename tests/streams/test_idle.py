"""Idle partitions: one view posted over HTTP and nothing else still closes, by the worker's ticks.

Real processes throughout (gunicorn ingest, the session's broker and ClickHouse server, one
``run_stream`` worker): the view's summary row and its ``VideoWatched`` must appear within about
30 s of wall-clock time although no later event ever reaches its partition.
"""

from __future__ import annotations

import http.client
import time
import uuid

import orjson
import pytest
from django.conf import settings

from analytics_platform import event_format
from streams import processors
from streams.app import IdleTicker

from .conftest import wait_until, web_start


class FakeProcessor:
    """Stands in for the processor's timer view only (the ticker's decision logic, no Kafka here)."""

    def __init__(self, deadlines):
        self.deadlines = deadlines
        self.forgotten = []

    def next_deadline(self, partition):
        return self.deadlines.get(partition)

    def forget(self, partition):
        self.forgotten.append(partition)


def test_ticker_ticks_only_idle_assigned_partitions_with_a_due_or_unknown_timer():
    now_ms = 1_780_000_000_000
    fake = FakeProcessor({0: now_ms - 5_001, 1: now_ms - 4_000, 2: None, 3: now_ms - 60_000})
    ticker = IdleTicker(topic="events", processor=fake, idle_seconds=5, grace_ms=5_000, producer_factory=object)
    ticker.assignment_set(frozenset({0, 1, 2, 3}))
    start = time.monotonic()
    assert ticker.due(start + 1, now_ms) == []  # nothing idle yet
    ticker.note_message(3, tick=False)
    ticker._last_message[3] = start + 5.5  # as if that message was consumed half a second ago
    # 0: timer due at now - grace; 1: not yet due; 2: timers unknown (no message since assignment);
    # 3: not idle.
    assert ticker.due(start + 6, now_ms) == [0, 2]
    ticker._in_flight.update({0: start + 6, 2: start + 6})
    assert ticker.due(start + 7, now_ms) == []
    ticker.note_message(0, tick=True)  # our tick came back: no longer in flight
    assert 0 not in ticker._in_flight
    ticker.assignment_set(frozenset({1, 3}))
    assert sorted(fake.forgotten) == [0, 2]
    assert ticker.due(start + 100, now_ms) == [3]


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.django_db(databases=["default", "clickhouse"])
def test_a_finished_view_with_no_later_traffic_closes_within_thirty_seconds(stream_env, tmp_path):
    web, port = web_start(stream_env, tmp_path)
    try:
        worker = stream_env.worker_start(STREAMS_IDLE_TICK_SECONDS="1")
        time.sleep(8)  # the worker joins its group (assignment known from its first statistics report)
        session = str(uuid.uuid4())
        now = int(time.time() * 1000)
        common = {"userId": "quiet-user", "sessionId": session, "videoId": "video-1", "country": "FR"}
        events = [
            {"eventId": str(uuid.uuid4()), "type": "view_start", "timestamp": now - 12_000, **common},
            {"eventId": str(uuid.uuid4()), "type": "playing", "timestamp": now - 11_000, **common},
            {"eventId": str(uuid.uuid4()), "type": "ended", "timestamp": now, "positionMs": 11_000, **common},
        ]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST", "/events", body=orjson.dumps({"events": events}), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        assert response.status == 202, response.read()
        conn.close()
        posted = time.monotonic()

        client = stream_env.clickhouse()

        def summarised() -> bool:
            return bool(client.execute("SELECT count() FROM view_summaries")[0][0])

        wait_until(summarised, timeout=30, interval=0.5, what="the view's summary row")
        print(f"summary row in ClickHouse {time.monotonic() - posted:.1f} s after the POST")
        row = client.execute(
            "SELECT session_id, close_reason, watch_time_ms, startup_time_ms, country FROM view_summaries"
        )
        assert row == [(session, "ended", 11_000, 1_000, "FR")]
        # Ticks are no events: the raw table and the rollups hold the three posted events only.
        assert sorted(r[0] for r in client.execute("SELECT type FROM events")) == ["ended", "playing", "view_start"]
        assert client.execute("SELECT sum(events) FROM metrics_event_type_minute")[0][0] == 3
        assert client.execute("SELECT sum(views) FROM metrics_view_minute")[0][0] == 1

        watched = stream_env.consume(event_format.VIDEO_WATCHED_TOPIC, timeout=15)
        assert [w["id"] for w in watched] == [str(processors.video_watched_id(session))]
        assert watched[0]["closeReason"] == "ended" and watched[0]["watchTimeMs"] == 11_000
        assert stream_env.consume(event_format.EVENTS_DLQ_TOPIC, timeout=5) == []

        # The events topic: the posted message and a few ticks, not one per second per partition.
        raw = stream_env.consume(event_format.EVENTS_TOPIC, timeout=10)
        ticks = [m for m in raw if "tick" in m and "userId" not in m]
        assert len(raw) - len(ticks) == 1
        assert 1 <= len(ticks) <= 2 * settings.KAFKA_DEFAULT_PARTITIONS, ticks
        assert worker.poll() is None
    finally:
        web.terminate()
        web.wait(30)
