"""End to end through real processes: HTTP POST /events (gunicorn) -> broker -> run_stream -> ClickHouse.

The generated stream (known truth: startups, rebuffers, errors, exits before start, late and
duplicated events) is posted request by request, as players would send it; afterwards ClickHouse
holds exactly the expected rows, summaries and rollups, and the derived-event topics exactly the
expected ids.
"""

from __future__ import annotations

import http.client
import time
import zlib

import orjson
import pytest
from django.conf import settings

from tests.support.simulate import Message, stream_generate

from .conftest import assert_clickhouse_matches_truth, assert_derived_events_match_truth, wait_for_truth, web_start

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.django_db(databases=["default", "clickhouse"]),
]

API_FIELDS = (
    "eventId",
    "type",
    "userId",
    "sessionId",
    "videoId",
    "timestamp",
    "positionMs",
    "bitrateKbps",
    "errorCode",
    "errorMessage",
    "fatal",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "properties",
)


def _tick_users(messages: list[Message], partitions: int) -> None:
    """Ticks go through HTTP too: pick tick user ids that the producer's partitioner maps to each partition."""
    ticks = [m for m in messages if m.partition is not None]
    for message in ticks:
        n = 0
        while zlib.crc32(f"{message.user_id}-{n}".encode()) % partitions != message.partition:
            n += 1
        message.user_id = f"{message.user_id}-{n}"
        for event in message.events:
            event["userId"] = message.user_id


def test_http_to_clickhouse_gives_exactly_the_truth(stream_env, tmp_path):
    stream = stream_generate(views=300, users=50, seed=41, poison=False)
    _tick_users(stream.messages, settings.KAFKA_DEFAULT_PARTITIONS)
    web, port = web_start(stream_env, tmp_path, threads=4)
    try:
        stream_env.worker_start()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.monotonic()
        for message in stream.messages:
            body = orjson.dumps({"events": [{k: e[k] for k in API_FIELDS if k in e} for e in message.events]})
            conn.request("POST", "/events", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            result = orjson.loads(response.read())
            assert response.status == 202, result
            assert result["rejected"] == 0, result
        conn.close()
        print(f"posted {len(stream.messages)} requests in {time.monotonic() - started:.1f} s")
        wait_for_truth(stream_env, stream.truth, timeout=120)
        time.sleep(6)  # one more checkpoint: nothing else may arrive
        assert_clickhouse_matches_truth(stream_env.clickhouse(), stream.truth)
        assert_derived_events_match_truth(stream_env, stream.truth)
    finally:
        web.terminate()
        web.wait(30)
