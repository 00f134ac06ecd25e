"""The local stack keeps what it accepted: restarts of crashed children, a drain before it stops.

The slow test runs ``manage.py devstack`` (what ``make run`` runs) with a client posting events the
whole time: the stream worker is killed with SIGKILL and must come back while ingest keeps answering
202; then Ctrl-C (SIGINT) arrives while events are still being posted and the worker is behind, and
every event answered 202 must be in ClickHouse, once, when the stack has stopped (read from its data
dir by a fresh server).
The drain's arithmetic is checked against the session's broker with offsets committed by hand, and
the supervisor's backoff and its essential children on tiny child processes.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_driver import Client
from confluent_kafka import Consumer, Producer, TopicPartition

from analytics_platform import event_format, kafka
from analytics_platform.devstack.drain import DrainProgress, events_drain, events_left_count
from analytics_platform.devstack.processes import clickhouse_start, free_port
from analytics_platform.devstack.supervisor import Backoff, Supervisor
from tests.test_devstack import _start, _wait_ready


class Poster:
    """Posts small batches of events (fresh users and sessions) until stopped; records every answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.accepted: list[tuple[float, list[str]]] = []  # (monotonic time of the 202, event ids)
        self.failures: list[tuple[float, str]] = []  # (monotonic time, status or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)

    def accepted_ids(self, *, before: float = float("inf")) -> list[str]:
        return [i for at, ids in self.accepted if at < before for i in ids]

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            events: list[dict[str, Any]] = [
                {
                    "eventId": str(uuid.uuid4()),
                    "type": "heartbeat",
                    "userId": f"user-{uuid.uuid4().hex[:12]}",
                    "sessionId": f"session-{uuid.uuid4().hex[:12]}",
                    "videoId": "video-42",
                    "timestamp": int(time.time() * 1000),
                    "positionMs": 12_000,
                    "bitrateKbps": 4500,
                    "device": "desktop",
                    "country": "FR",
                }
                for _ in range(20)
            ]
            try:
                conn.request("POST", "/events", orjson.dumps({"events": events}), {"Content-Type": "application/json"})
                response = conn.getresponse()
                body = response.read()
            except (
                OSError,
                http.client.HTTPException,
            ) as exc:  # the web process stopping (or gone) closes or refuses connections
                self.failures.append((time.monotonic(), repr(exc)))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self._stop.wait(0.2)
                continue
            if response.status == 202 and orjson.loads(body)["accepted"] == len(events):
                self.accepted.append((time.monotonic(), [e["eventId"] for e in events]))
            else:
                self.failures.append((time.monotonic(), f"{response.status} {body[:200]!r}"))
            self._stop.wait(0.02)


def _wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, output: list[str]) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout:.0f}s:\n" + "".join(output[-60:]))


def _supervisor_lines(output: list[str]) -> list[str]:
    return [line.split("|", 1)[1].strip() for line in output if line.startswith("devstack ")]


def _pid_of(output: list[str], pattern: str) -> int | None:
    for line in reversed(_supervisor_lines(output)):
        match = re.match(pattern, line)
        if match:
            return int(match.group(1))
    return None


def _stored_ids(client: Client, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 5000):
        rows = client.execute(
            "SELECT toString(event_id) FROM events WHERE event_id IN %(ids)s", {"ids": ids[start : start + 5000]}
        )
        found.update(row[0] for row in rows)
    return found


@pytest.mark.kafka
@pytest.mark.clickhouse
@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_ctrl_c_drains_every_accepted_event(
    tmp_path: Path, collected_static: Path
) -> None:
    ports = {name: free_port() for name in ("web", "kafka", "clickhouse", "streams_metrics")}
    output: list[str] = []
    var = tmp_path / "var"
    process = _start(
        var,
        ports,
        output,
        INGEST_ALLOWLIST_ENABLED="false",
        INGEST_RATE_LIMIT_REQUESTS="0",
        DJANGO_STATIC_ROOT=str(collected_static),  # collected once per run, not once per stack
    )
    poster = Poster(ports["web"])
    try:
        _wait_ready(f"http://127.0.0.1:{ports['web']}", process, output)
        # The password the stack generated under var/ for its server and its own clients.
        password = (var / "clickhouse_password").read_text().strip()
        client = Client("127.0.0.1", port=ports["clickhouse"], database="analytics", password=password)
        poster.start()
        _wait_for(lambda: len(poster.accepted) >= 5, timeout=30, what="first 202s", output=output)
        first = poster.accepted_ids()[:20]
        _wait_for(lambda: len(_stored_ids(client, first)) == 20, timeout=90, what="first events stored", output=output)

        # SIGKILL of the stream worker: restarted with a new pid, processing again, ingest unaffected.
        old_pid = _pid_of(output, r"started streams \(pid (\d+)\)")
        assert old_pid is not None
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        restart_s = _wait_for(
            lambda: _pid_of(output, r"restarted streams \(pid (\d+)") is not None,
            timeout=30,
            what="streams restart",
            output=output,
        )
        new_pid = _pid_of(output, r"restarted streams \(pid (\d+)")
        assert new_pid is not None and new_pid != old_pid
        os.kill(new_pid, 0)  # alive
        restarted = time.monotonic()

        def after_restart() -> list[str]:
            return [i for at, ids in poster.accepted if at > restarted for i in ids][:20]

        _wait_for(lambda: bool(after_restart()), timeout=10, what="a 202 after the restart", output=output)
        later = after_restart()
        _wait_for(
            lambda: len(_stored_ids(client, later)) == len(later),
            timeout=120,
            what="events posted after the restart stored",
            output=output,
        )
        recovered_s = time.monotonic() - killed
        assert not poster.failures, poster.failures[:5]  # 202 throughout the crash and the restart
        print(f"streams restarted {restart_s:.1f}s after SIGKILL; processing again after {recovered_s:.1f}s")

        # Ctrl-C while events are still being posted and the worker is behind: every 202 must
        # survive the broker's stop. The worker is frozen (SIGSTOP) from 2 s before the interrupt
        # until the drain has begun, so that the broker holds a backlog the worker has not even
        # consumed: stopping it then (what SIGTERM alone does) would lose the backlog; the drain
        # must wait until it is written.
        time.sleep(2)
        os.kill(new_pid, signal.SIGSTOP)
        try:
            time.sleep(2)
            snapshot = poster.accepted_ids()
            not_yet = len(snapshot) - len(_stored_ids(client, snapshot))
            interrupted = time.monotonic()
            process.send_signal(signal.SIGINT)
            _wait_for(
                lambda: any(line.startswith("draining:") for line in _supervisor_lines(output)),
                timeout=30,
                what="the drain",
                output=output,
            )
        finally:
            os.kill(new_pid, signal.SIGCONT)
        client.disconnect()
        assert not_yet > 0
        assert process.wait(180) == 0, "".join(output[-60:])
        stop_s = time.monotonic() - interrupted
    finally:
        poster.stop()
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = _supervisor_lines(output)
    drained = [line for line in lines if line.startswith("drained ")]
    assert drained, lines[-15:]
    assert int(drained[0].split()[1]) > 0, drained  # "drained N messages in ...": the backlog
    assert lines[-1] == "stopped"
    # Ingest stopped first: nothing was refused before the interrupt.
    assert all(at > interrupted for at, _ in poster.failures), poster.failures[:5]
    accepted = poster.accepted_ids()
    late = len(poster.accepted_ids()) - len(poster.accepted_ids(before=interrupted))
    print(
        f"stopped {stop_s:.1f}s after SIGINT ({drained[0]}); {len(accepted)} events accepted, {late} after"
        f" SIGINT, {not_yet} not in ClickHouse at SIGINT"
    )

    server = clickhouse_start(data_dir=var / "clickhouse")
    try:
        client = Client(**server.client_kwargs(), database="analytics")
        stored = _stored_ids(client, accepted)
        missing = set(accepted) - stored
        assert not missing, f"{len(missing)} of {len(accepted)} accepted events not in ClickHouse"
        ((rows,),) = client.execute("SELECT count() FROM events")
        assert rows == len(accepted)  # once each: the replay after the SIGKILL wrote nothing twice
        client.disconnect()
    finally:
        server.stop()


def _exiting_child(code: int) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.exit({code})"]


def test_a_crashing_child_is_restarted_with_capped_backoff_while_the_others_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sup = Supervisor(backoff=Backoff(base=0.2, cap=0.8, stable_seconds=30))
    sup.start("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    sup.start("crashy", _exiting_child(3))
    steady_pid = sup.child("steady").process.pid
    try:
        assert sup.pause(4.0)
        crashy = sup.child("crashy")
        # Delays 0.2, 0.4, 0.8, 0.8 ...: a handful of restarts in 4 s, not a spin (each start ~0.05 s).
        assert 3 <= crashy.failures <= 8, crashy.failures
        assert sup.child("steady").running and sup.child("steady").process.pid == steady_pid
        assert not sup.stopping
    finally:
        sup.shutdown([["crashy"], ["steady"]])
    out = capsys.readouterr().out
    assert "crashy exited with 3" in out and "restarting in 0.8s; crash loop: 4 exits in a row" in out, out
    assert [Backoff().delay(n) for n in (1, 2, 3, 5, 6, 10)] == [1, 2, 4, 16, 30, 30]


def test_an_essential_child_exiting_stops_the_stack_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    sup = Supervisor(grace_seconds=5)
    sup.start("broker", _exiting_child(0), restart=False)
    sup.start("web", [sys.executable, "-c", "import time; time.sleep(60)"])
    steps: list[str] = []
    sup.wait(interval=0.05)  # returns once the broker has exited
    assert sup.failed is not None and sup.failed.name == "broker"
    sup.shutdown([["web"], lambda: steps.append("drain"), ["broker"]])
    assert steps == ["drain"]
    assert not sup.child("web").running
    out = capsys.readouterr().out
    assert "broker exited with 0" in out and "cannot be restarted" in out, out
    assert out.rstrip().endswith("stopped")


@pytest.fixture
def events_topic(kafka_broker: Any, settings: Any) -> str:
    """A fresh events topic of 2 partitions and a consumer group of its own on the session's broker."""
    prefix = f"d{uuid.uuid4().hex[:8]}-"
    settings.KAFKA_TOPIC_PREFIX = prefix
    settings.KAFKA_DEFAULT_PARTITIONS = 2
    settings.STREAMS_CONSUMER_GROUP = f"streams-{prefix}"
    kafka.topics_ensure()
    return kafka.topic_name(event_format.EVENTS_TOPIC)


def _commit(group: str, topic: str, offsets: dict[int, int]) -> None:
    consumer = Consumer(kafka.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


@pytest.mark.kafka
def test_the_drain_waits_until_the_committed_offsets_reach_the_end_of_every_partition(
    events_topic: str, settings: Any
) -> None:
    producer = Producer(kafka.client_config(**{"linger.ms": 200, "acks": "all"}))
    for _ in range(3):  # 3 batches of 5 records on partition 0: offsets 0-14
        for i in range(5):
            producer.produce(events_topic, b'{"v": 2, "events": [{}, {}]}', b"k%d" % i, partition=0)
        producer.flush(10)
    group = settings.STREAMS_CONSUMER_GROUP
    # Tansu's ListOffsets LATEST says 11 for partition 0 (the last batch's base offset + 1): a drain
    # comparing committed offsets with it would stop here and lose offsets 11-14.
    _commit(group, events_topic, {0: 11})
    reports: list[DrainProgress] = []

    def pause(seconds: float) -> bool:
        time.sleep(seconds)
        return True

    progress = events_drain(timeout=1.5, pause=pause, report=reports.append, report_every=0.2)
    assert not progress.drained
    assert progress.left == {0: 4, 1: 0}  # partition 1 was empty: its marker is its first message
    assert "4 messages on" in progress.describe() and "0: 4" in progress.describe()
    counted = events_left_count(progress)
    assert counted == 8, counted  # what the failed drain's last line reports
    assert reports and reports[-1].left == {0: 4, 1: 0}

    # The worker processes the rest and the first drain's markers (offsets 15 and 0) and commits.
    _commit(group, events_topic, {0: 16, 1: 1})
    progress = events_drain(timeout=10, pause=pause, report=reports.append)
    # Drained at once: the new markers sit at 16 and 1, and a committed offset is the next message
    # to process, so nothing before them is left; the markers themselves need not be processed.
    assert progress.drained and progress.initial == 0, progress
