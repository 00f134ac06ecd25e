"""What ``make run`` starts, in order, on the embedded default, and how it stops.

Infrastructure first (broker, ClickHouse server, schema registry), then the one-off bootstrap
(topics, migrations, schema registration, admin user), then the long-running application
processes. Each later capability adds its processes to ``application_processes``.

Which children are restarted when they exit on their own (with backoff, the others serving on):

* ``clickhouse``, ``registry``, ``traces``, ``web``, ``streams``, ``worker``, ``beat``, ``errors-indexer``: yes.
  Their state is on disk under var/ (ClickHouse parts, the schema log, SQLite, the Celery queue folders) or in the
  broker (the worker's offsets and state changelogs), and their clients retry: ingest answers 503
  while the broker is out of reach, the ClickHouse sink backs off and replays from the last commit, whose rows it skips.
* ``broker``: no. Tansu here keeps every topic, offset and consumer group in memory, so a new
  broker would be an empty one: the accepted events the worker had not written yet are gone, and a
  stack that restarted it on its own would go on answering 202 as if nothing had been lost. Its
  exit therefore stops the whole stack, with a log line saying so; ``make run`` again starts a
  fresh broker and recreates the topics.

The stop (``stack_shutdown``) goes the way the data flows: ingest first, so that nothing more is
accepted; then the drain (``analytics_platform/devstack/drain.py``) until the stream worker has
written everything the broker holds to ClickHouse, bounded by ``DEVSTACK_DRAIN_SECONDS``; then
the stream worker, Celery (signalled with ingest), ClickHouse and last the broker.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from confluent_kafka import KafkaException
from django.conf import settings

from analytics_platform.devstack.drain import (
    DrainError,
    DrainProgress,
    events_drain,
    events_left_count,
    progress_refresh,
)
from analytics_platform.devstack.supervisor import Supervisor


class ProcessSpec(NamedTuple):
    name: str
    argv: list[str]
    restart: bool = True  # see the module docstring for which children may be restarted


def manage(*args: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]


def traces_receiver_wanted() -> bool:
    """Tracing on and exporting to this machine's receiver port: run ``otlp_receiver`` (``traces_show`` reads it).

    An operator then sees a trace with ``manage.py traces_show`` and nothing else to install; with
    the endpoint pointed at a real collector the stack starts no receiver.
    """
    if not settings.OTEL_TRACING_ENABLED:
        return False
    endpoint = urlsplit(settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
    return endpoint.hostname in {"127.0.0.1", "localhost"} and endpoint.port == settings.OTLP_RECEIVER_PORT


def application_processes(*, port: int) -> list[ProcessSpec]:
    bin_dir = Path(sys.executable).parent
    specs = [
        (
            "web",
            [str(bin_dir / "gunicorn"), "-c", "python:analytics_platform.gunicorn_conf", f"--bind=127.0.0.1:{port}"],
        ),
        # One stream worker; start more `run_stream` processes (same group) to split the partitions.
        ("streams", manage("run_stream")),
        (
            "worker",
            [
                str(bin_dir / "celery"),
                "-A",
                "analytics_platform",
                "--quiet",  # no ASCII-art banner in the JSON log stream
                "worker",
                "-l",
                "INFO",
                "-c",
                "2",
                "--pool",
                "threads",
            ],
        ),
        (
            "beat",
            [
                str(bin_dir / "celery"),
                "-A",
                "analytics_platform",
                "--quiet",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(settings.CELERY_BEAT_SCHEDULE_FILENAME),
            ],
        ),
    ]
    if traces_receiver_wanted():
        # First, so the others' first spans find it listening (their exporters retry meanwhile).
        specs.insert(0, ("traces", manage("otlp_receiver")))
    if settings.ELASTICSEARCH_ERRORS_URL:
        # Player-error search (streams/error_indexer.py): a consumer of its own, so a slow or
        # absent Elasticsearch never holds back the stream worker; off unless a URL is configured.
        specs.append(("errors-indexer", manage("index_errors")))
    return [ProcessSpec(name, argv) for name, argv in specs]


def runtime_dirs_prepare() -> dict[str, str]:
    """Create var/ folders; return the environment every child process shares."""
    var = Path(settings.VAR_DIR)
    for sub in ("clickhouse", "celery/queue", "celery/processed", "celery/control", "logs"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    # Prometheus multi-process files describe live processes only: start from an empty folder.
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True)
    return {
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
        "ANALYTICS_VAR_DIR": str(var),
        # Every child that talks to ClickHouse (web, streams, Celery) gets the password the
        # embedded server is started with, whatever var/ its settings would find.
        "CLICKHOUSE_PASSWORD": str(settings.DATABASES["clickhouse"]["PASSWORD"]),
    }


def schema_registry_address() -> tuple[str, int]:
    """Where the local registry listens: the host and port of ``SCHEMA_REGISTRY_URL`` (Confluent's 8081)."""
    parts = urlsplit(settings.SCHEMA_REGISTRY_URL)
    return parts.hostname or "127.0.0.1", parts.port or 8081


def env_port(default: int = 8000) -> int:
    return int(os.environ.get("PORT", default))


def drain_seconds() -> float:
    """How long a stop waits for the stream worker to drain the broker (``DEVSTACK_DRAIN_SECONDS``).

    Two minutes: the worker spends about 21 CPU-us per event (``streams/app.py``, ``GC_THRESHOLDS``),
    so even a backlog of a million events needs well under that, and waiting longer for a ClickHouse
    that does not come back only delays the same loss (a second Ctrl-C ends the wait sooner).
    """
    return float(os.environ.get("DEVSTACK_DRAIN_SECONDS", "120"))


def drain_run(sup: Supervisor, *, timeout: float) -> DrainProgress | None:
    """Wait for the stream worker to write everything the broker holds; None when it cannot start."""
    if sup.failed is not None and sup.failed.name == "broker":
        sup.say(
            "devstack",
            "no drain: the broker is gone, and with it every accepted event not yet in ClickHouse"
            " (`make run` again starts a fresh broker)",
        )
        return None
    sup.say("devstack", f"draining: waiting up to {timeout:.0f}s for the stream worker to write what the broker holds")

    def report(progress: DrainProgress) -> None:
        sup.say("devstack", f"draining ({progress.seconds:.0f}s): {progress.describe()}")

    try:
        progress = events_drain(timeout=timeout, pause=sup.pause, report=report)
    except DrainError as exc:
        sup.say("devstack", f"drain failed: {exc}; accepted events not yet in ClickHouse are lost")
        return None
    if progress.drained:
        sup.say(
            "devstack",
            f"drained {progress.initial} messages in {progress.seconds:.1f}s: every accepted event is in ClickHouse",
        )
    elif sup.forced:
        lost = progress.describe(events_left_count(progress, timeout=2.0))
        sup.say("devstack", f"drain abandoned: {lost}; they are lost when the broker stops")
    else:
        sup.say("devstack", f"not drained after {progress.seconds:.0f}s: {progress.describe()}; stopping the worker")
    return progress


def loss_report(sup: Supervisor, progress: DrainProgress) -> bool:
    """After the worker's exit, which ends with a last checkpoint: log what the broker takes with it."""
    try:
        progress = progress_refresh(progress)
    except KafkaException as exc:
        progress.note = f"committed offsets unavailable: {exc}"
    if progress.drained:
        sup.say("devstack", "the stream worker's last checkpoint wrote the rest: every accepted event is in ClickHouse")
        return True
    sup.say(
        "devstack",
        f"lost: {progress.describe(events_left_count(progress))}, gone when the broker stops"
        " (was ClickHouse up? was the stream worker crashing? see the clickhouse and streams lines)",
    )
    return False


def stack_shutdown(sup: Supervisor, *, drain: bool = True) -> bool:
    """Stop every child, ingest first and the broker last; True when nothing accepted was lost."""
    progress: DrainProgress | None = None
    kept = not drain

    def drain_step() -> None:
        nonlocal progress, kept
        progress = drain_run(sup, timeout=drain_seconds())
        kept = progress is not None and progress.drained

    def loss_step() -> None:
        nonlocal kept
        if progress is not None and not progress.drained:
            kept = loss_report(sup, progress)

    # Celery neither reads nor writes the broker: it gets SIGTERM with ingest, so that its warm
    # shutdown (about 5 s) runs alongside the drain instead of after it. It reads ClickHouse, so it
    # is waited for before ClickHouse stops.
    phases: list[list[str] | Callable[[], None]] = [
        ["web"],
        ["streams"],
        # The indexer after the drain: it indexes the last VideoErrors the worker published.
        ["beat", "worker", "errors-indexer"],
        ["clickhouse", "registry"],
        ["broker"],
    ]
    if drain:
        phases[1:2] = [drain_step, ["streams"], loss_step]
    sup.shutdown(phases, early=["beat", "worker"])
    return kept and not sup.forced
