"""Hostile clients through the real processes: HTTP ingest (gunicorn) -> broker -> worker -> ClickHouse.

What the product promises, checked at the end of a generated run: every event answered 202 is in
ClickHouse exactly once or in the dead-letter topic with a reason, nothing else is missing, no
request got a 5xx, and the worker's lag returns to zero. And one client's odd batch (a hundred
and fifty days in one request) never stops the pipeline for the others.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.request
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics_platform import event_format
from analytics_platform.devstack import processes
from tests.support.hostile import event_bytes, json_encode, times

from .conftest import wait_until, web_start

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]

DAY_MS = 86_400_000


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, dict[str, Any]]:
    conn.request("POST", "/events", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, orjson.loads(response.read())


def _valid_event(now_ms: int, rng: random.Random, *, user: str | None = None, ts: int | None = None) -> dict[str, Any]:
    session = f"s{rng.randrange(40)}"
    return {
        "eventId": str(uuid.UUID(int=rng.getrandbits(128))),
        "type": rng.choice(["view_start", "playing", "heartbeat", "pause", "click", "player.quality"]),
        "userId": user or f"u{rng.randrange(30)}",
        "sessionId": session,
        "videoId": f"v{rng.randrange(5)}",
        "timestamp": ts if ts is not None else now_ms - rng.randrange(0, 100 * DAY_MS),
        "country": rng.choice(["DE", "US", "", "ÄÖ", "😀"]),
    }


def _lag(metrics_port: int) -> float | None:
    """The worker's total consumer lag on the events topic, from its own gauge (None: not reported yet)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("streams_consumer_lag{")]
    return sum(values) if values else None


def _stored_ids(stream_env: Any) -> dict[str, int]:
    rows = stream_env.clickhouse().execute("SELECT toString(event_id), count() FROM events GROUP BY event_id")
    return dict(rows)


@pytest.mark.slow
def test_hostile_batches_every_accepted_event_is_stored_once_or_dead_lettered(stream_env, tmp_path):
    web, port = web_start(stream_env, tmp_path, threads=4)
    metrics_port = processes.free_port()
    stream_env.worker_start(metrics_port=metrics_port)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    accepted: dict[str, bytes] = {}  # eventId (canonical) -> the event's bytes as sent
    sent_before: list[bytes] = []  # events answered 202 earlier, re-sent as client retries
    statuses: list[int] = []
    codes: list[str | None] = []  # of the refused bodies
    bodies: list[bytes] = []
    rng = random.Random(7)

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        # Fresh ids: the same id from two users is two events (dedup is per user, see streams/processors).
        hostile=st.lists(event_bytes(ids=st.uuids().map(str) | st.text(max_size=5)), max_size=4),
        valid=st.integers(1, 12),
        # Client retries: events of earlier requests sent again (old ones among them, which the
        # worker once stored twice when a fresh partition began with them).
        retries=st.integers(0, 3),
        sent_at=st.none() | st.none() | times,
        spread_days=st.sampled_from([0, 0, 100]),
    )
    def post_one(hostile, valid, retries, sent_at, spread_days):
        now = int(time.time() * 1000)
        good = [
            orjson.dumps(_valid_event(now, rng, ts=now - i * DAY_MS if spread_days else None))
            for i in range(spread_days or valid)
        ]
        again = rng.sample(sent_before, min(retries, len(sent_before)))
        events = [*hostile, *good, *again]
        rng.shuffle(events)
        body = b'{"events":[' + b",".join(events) + b"]"
        if sent_at is not None:
            body += b',"sentAt":' + json_encode(sent_at)
        body += b"}"
        status, result = _post(conn, body)
        statuses.append(status)
        bodies.append(body)
        assert status < 500, result
        if status != 202:
            assert status in (400, 413), result
            codes.append(result.get("code") or result.get("error", {}).get("code"))
            return
        refused = {error["index"] for error in result["errors"]}
        assert result["accepted"] == len(events) - len(refused)
        for index, raw in enumerate(events):
            if index in refused:
                continue
            event_id = str(uuid.UUID(json.loads(raw)["eventId"]))  # accepted: valid JSON, a UUID
            accepted.setdefault(event_id, raw)
            sent_before.append(raw)

    try:
        post_one()
        conn.close()
        # It exercised the pipeline, not only refusals.
        assert statuses.count(202) >= len(statuses) // 4, (statuses, codes)
        expected = set(accepted)

        def settled() -> bool:
            stored = _stored_ids(stream_env)
            dead = {d.get("eventId") for d in stream_env.consume(event_format.EVENTS_DLQ_TOPIC, timeout=3)}
            return expected <= set(stored) | dead and _lag(metrics_port) == 0

        wait_until(settled, timeout=180, interval=3, what="every accepted event stored or dead-lettered, lag 0")
        time.sleep(6)  # one more checkpoint: nothing else may arrive
        stored = _stored_ids(stream_env)
        dead_letters = stream_env.consume(event_format.EVENTS_DLQ_TOPIC, timeout=5)
        dead = {d.get("eventId") for d in dead_letters}
        assert all(d["reason"] and d["type"] == "DeadLetter" for d in dead_letters)
        twice = [i for i, n in stored.items() if n != 1]
        if twice:
            (tmp_path / "twice.txt").write_bytes(b"\n\n".join(b for b in bodies if twice[0].encode() in b.lower()))
        assert not twice, "; ".join(
            " ".join(str(v) for v in row)
            for row in stream_env.clickhouse().execute(
                "SELECT toString(event_id), user_id, ts, client_ts, received_at, kafka_partition, kafka_offset, late"
                " FROM events WHERE toString(event_id) IN %(ids)s ORDER BY event_id",
                {"ids": twice[:2]},
            )
        )
        assert set(stored) <= expected, "nothing stored that was not accepted"
        assert not set(stored) & dead, "nothing both stored and dead-lettered"
        assert expected == set(stored) | (dead & expected), "nothing accepted is missing"
        print(
            f"{len(statuses)} requests ({statuses.count(202)} answered 202), {len(expected)} distinct events"
            f" accepted: {len(stored)} stored, {len(dead & expected)} dead-lettered"
        )
    finally:
        web.terminate()
        web.wait(30)


def test_a_batch_over_150_days_does_not_stop_normal_traffic(stream_env, tmp_path):
    """The report that started it: 150 days in one request stopped every partition while ingest said 202."""
    web, port = web_start(stream_env, tmp_path)
    stream_env.worker_start()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        now = int(time.time() * 1000)
        spread = [
            {"eventId": str(uuid.uuid4()), "type": "click", "userId": "wide", "timestamp": now - day * DAY_MS}
            for day in range(150)
        ]
        status, result = _post(conn, orjson.dumps({"events": spread}))
        assert status == 202, result
        too_old = [e["index"] for e in result["errors"] if e["code"] == "timestamp_out_of_range"]
        assert result["accepted"] + len(too_old) == 150 and result["accepted"] >= 89
        kept = {spread[i]["eventId"] for i in range(150) if i not in too_old}
        session = str(uuid.uuid4())
        normal = [
            {"eventId": str(uuid.uuid4()), "type": etype, "userId": "normal", "sessionId": session, "videoId": "v1"}
            | {"timestamp": now + offset}
            for etype, offset in (("view_start", 0), ("playing", 500), ("heartbeat", 10_000))
        ]
        status, result = _post(conn, orjson.dumps({"events": normal}))
        assert (status, result["accepted"]) == (202, 3), result
        started = time.monotonic()
        wanted = kept | {e["eventId"] for e in normal}
        wait_until(lambda: wanted <= set(_stored_ids(stream_env)), timeout=60, interval=0.5, what="both batches")
        print(f"normal traffic queryable {time.monotonic() - started:.1f} s after the 150-day batch")
        assert set(_stored_ids(stream_env)) == wanted
    finally:
        conn.close()
        web.terminate()
        web.wait(30)
