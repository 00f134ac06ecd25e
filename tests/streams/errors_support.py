"""Shared by the player-error tests: osmem, the indexer subprocess, a run of the pipeline with known errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.logs.osmem import Osmem, osmem_start
from tests.streams.conftest import StreamEnv
from tests.support.simulate import Message


@pytest.fixture(scope="module")
def osmem() -> Iterator[Osmem]:
    server = osmem_start()
    yield server
    server.stop()


def indexer_start(
    stream_env: StreamEnv, *, url: str, prefix: str, name: str = "indexer", **env: str
) -> subprocess.Popen[bytes]:
    """``manage.py index_errors`` as its own process (tests/streams/run_error_indexer.py), logging to ``<name>.log``."""
    log = open(stream_env.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 -- lives with the process
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.streams.run_error_indexer"],
        env={
            **os.environ,
            **stream_env.env,
            "PYTHONPATH": str(settings.BASE_DIR),
            "ELASTICSEARCH_ERRORS_URL": url,
            "ELASTICSEARCH_ERRORS_INDEX_PREFIX": prefix,
            "ELASTICSEARCH_ERRORS_CONSUMER_GROUP": f"indexer-{stream_env.prefix}",
            "ELASTICSEARCH_ERRORS_REQUEST_TIMEOUT_SECONDS": "3",
            "LOG_LEVEL": "INFO",
            **env,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=settings.BASE_DIR,
    )
    stream_env.workers.append(process)  # stopped (SIGTERM) with the workers at the end of the test
    return process


@dataclass(frozen=True)
class ErrorRun:
    """What one run of the pipeline should leave in the index."""

    fatal_event_id: str
    message: str  # the player's errorMessage, unique to the run
    code: str
    video_id: str
    country: str
    device: str
    bad_event_id: str  # an event the worker dead-letters (timestamp is not a number)
    messages: list[Message]


def error_run(*, at_ms: int | None = None) -> ErrorRun:
    """One view with a fatal error whose message is unique, and one event that breaks the contract."""
    now = at_ms or int(time.time() * 1000) - 60_000
    tag = uuid.uuid4().hex[:10]
    user, session, video = f"user-err-{tag}", str(uuid.uuid4()), f"video-err-{tag}"
    dims = {"country": "FR", "device": "smart_tv", "os": "tizen", "browser": "webkit", "cdn": "cdn-a", "player": "p1"}
    fatal_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4())
    message = f"manifest request failed for rendition {tag} after 3 attempts"

    def event(event_id: str, etype: str, ts: Any, **extra: Any) -> dict[str, Any]:
        return {
            "eventId": event_id,
            "type": etype,
            "userId": user,
            "sessionId": session,
            "videoId": video,
            "timestamp": ts,
            "receivedAt": now + 1_000,
            **dims,
            **extra,
        }

    events = [
        event(str(uuid.uuid4()), "view_start", now),
        event(fatal_id, "error", now + 500, errorCode="E_MANIFEST_403", errorMessage=message, fatal=True),
        event(bad_id, "error", "yesterday", errorCode="E_X", errorMessage="never stored"),
    ]
    return ErrorRun(
        fatal_event_id=fatal_id,
        message=message,
        code="E_MANIFEST_403",
        video_id=video,
        country="FR",
        device="smart_tv",
        bad_event_id=bad_id,
        messages=[Message(user_id=user, received_at=now + 1_000, events=events)],
    )


def indexed(osmem: Osmem, prefix: str) -> list[dict[str, Any]]:
    """Every document under ``<prefix>-*``, with its id and index, straight from the store."""
    client = osmem.client()
    if not client.indices.exists(index=f"{prefix}-*", allow_no_indices=False):
        return []
    client.indices.refresh(index=f"{prefix}-*")
    response = client.search(index=f"{prefix}-*", size=1000)
    return [{"_id": h["_id"], "_index": h["_index"], **h["_source"]} for h in response["hits"]["hits"]]


def log_text(stream_env: StreamEnv, name: str = "indexer") -> str:
    path = Path(stream_env.tmp_path) / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""
