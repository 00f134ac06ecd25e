"""Ship each process's JSON log lines to the Elasticsearch log store, from a background thread.

``ElasticsearchLogHandler`` is a stdlib ``logging.Handler`` that settings.LOGGING adds next to the
stdout handler when ``ELASTICSEARCH_LOGS_URL`` is set. How it behaves, and why:

* **The same line as stdout.** It renders with the same structlog ``ProcessorFormatter`` chain
  (the ``json`` formatter of settings.LOGGING), on the caller's thread, where the request id
  (contextvars) and the current span are. The document is that JSON object plus ``@timestamp``,
  ``service``, ``process``, ``pid`` and ``host``.
* **Never blocks the caller.** The rendered line goes on a bounded in-memory queue with
  ``put_nowait``; when the queue is full the line is dropped and counted
  (``log_shipping_records_dropped_total{reason="queue_full"}``). Logging never waits for the
  network and never raises into the application because Elasticsearch is down.
* **A daemon thread ships.** It takes up to ``batch_size`` lines or what arrived within
  ``flush_interval`` and indexes them with ``elasticsearch.helpers.bulk`` into the daily index of
  each line. Every document gets its id here, once, so re-sending a batch after an ambiguous
  failure (a timeout after Elasticsearch indexed it) overwrites instead of duplicating.
* **Failures.** A failed batch is kept and retried with capped exponential backoff while the queue
  still has room; once the queue is full (the outage outlasted the buffer) the held batch is given
  up (``reason="unavailable"``) so the newest lines get their turn. Documents Elasticsearch refuses
  (``4xx`` per item) are dropped (``reason="rejected"``); ``429``/``5xx`` items are retried. The
  shipper never logs about itself through logging (that would feed its own queue): it writes a
  rate-limited JSON warning line to stderr, and records emitted on its own thread (the
  Elasticsearch client's transport logs) are not shipped.
* **Exit.** ``atexit`` (and ``logging.shutdown``) close the handler: one last attempt for what is
  queued, bounded by ``exit_timeout``; what is left is counted (``reason="shutdown"``) and
  reported on stderr. Celery's prefork children leave with ``os._exit`` (no atexit), so
  ``analytics_platform.celery`` calls ``handlers_close()`` on ``worker_process_shutdown``.
* **Fork-safe.** Nothing starts until a process emits its first line: the queue, the thread and the
  client belong to the process that created them (checked with ``os.getpid()``; a forked child
  resets them, ``os.register_at_fork``), so gunicorn workers and Celery's pool children each ship
  their own lines and never re-ship a copy of their parent's queue.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, cast

import orjson
import structlog
from elasticsearch import ApiError, ConnectionTimeout, Elasticsearch, TransportError, helpers
from prometheus_client import Counter

from analytics_platform.log_store import (
    LogStoreConfig,
    log_index_name,
    log_index_template_install,
    log_store_client_create,
    log_store_config_get,
)
from analytics_platform.logs import FOREIGN_PRE_CHAIN, JSON_RENDERER

records_shipped = Counter("log_shipping_records_shipped", "Log records indexed into the Elasticsearch log store.")
records_dropped = Counter(
    "log_shipping_records_dropped",
    "Log records not shipped to Elasticsearch (they are still on stdout), by reason: queue_full (the "
    "in-process queue was full), unavailable (a batch given up after failed attempts once the queue "
    "was full), rejected (Elasticsearch refused the document), shutdown (not shipped before the exit "
    "timeout), closed (logged after the handler was closed).",
    ["reason"],
)
bulk_failures = Counter(
    "log_shipping_bulk_failures",
    "Attempts to ship a batch that failed as a whole (the batch is retried), by reason: connection, "
    "timeout, http_<status>, or the exception type.",
    ["reason"],
)

# Put on the queue to wake the thread now (flush, close) instead of at the end of its wait.
_WAKE = object()
# Item statuses Elasticsearch returns for a document it could index later (too busy, shard unavailable).
_RETRYABLE_ITEM_STATUS = frozenset({429, 500, 502, 503, 504})
_CELERY_COMMANDS = frozenset({"worker", "beat", "events", "inspect", "call", "purge", "shell", "multi", "flower"})


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def process_name(argv: list[str]) -> str:
    """The ``process`` field: ``gunicorn``, ``celery worker``, ``manage.py run_stream``..."""
    if not argv or argv[0] in {"", "-c"}:
        return "python"
    program = Path(argv[0]).name
    if program == "__main__.py":  # python -m celery ...
        program = Path(argv[0]).parent.name
    args = [arg for arg in argv[1:] if not arg.startswith("-")]
    if program in {"manage.py", "django-admin"} and args:
        return f"{program} {args[0]}"
    if program == "celery":
        command = next((arg for arg in args if arg in _CELERY_COMMANDS), None)
        return f"celery {command}" if command else program
    return program


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionTimeout):
        return "timeout"
    if isinstance(exc, TransportError):
        return "connection"
    if isinstance(exc, ApiError):
        return f"http_{exc.status_code}"
    return type(exc).__name__


class ElasticsearchLogHandler(logging.Handler):
    """Bulk-index rendered log lines into the log store without ever blocking the caller (see module doc)."""

    def __init__(
        self,
        *,
        config: LogStoreConfig,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        exit_timeout: float = 2.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        warn_interval: float = 30.0,
        service: str | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        super().__init__(level)
        self.config = config
        self.queue_size = max(queue_size, 1)
        # A batch never waits for more lines than the queue can hold.
        self.batch_size = max(1, min(batch_size, self.queue_size))
        self.flush_interval = flush_interval
        self.exit_timeout = exit_timeout
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.warn_interval = warn_interval
        self.service = service or os.environ.get("OTEL_SERVICE_NAME", "analytics-platform")
        # settings.LOGGING sets the shared "json" formatter; this default is the same chain, for
        # handlers made in code.
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(processors=JSON_RENDERER, foreign_pre_chain=FOREIGN_PRE_CHAIN)
        )
        self._closed = False
        self._atexit_pid = 0
        self._warn_lock = threading.Lock()
        self._warned_at = -float("inf")
        self._warnings_suppressed = 0
        self._reset()
        _HANDLERS.add(self)

    # --- state of one process ----------------------------------------------------------------

    def _reset(self) -> None:
        """Fresh queue, locks and no thread: at creation and in a forked child.

        A child must not touch its parent's copies: the queue's lock may have been held by another
        thread at the moment of the fork, and the lines in it are the parent's to ship.
        """
        self._pid = os.getpid()
        self._queue: queue.Queue[Any] = queue.Queue(self.queue_size)
        self._thread: threading.Thread | None = None
        self._worker_ident: int | None = None
        self._start_lock = threading.Lock()
        self._stop = threading.Event()
        self._drops_lock = threading.Lock()
        self._full_drops = 0  # since the last stderr report
        self._shutdown_drops = 0
        self._last_error = ""
        self._abandoned = False

    def _start(self) -> None:
        with self._start_lock:
            if self._pid != os.getpid():
                self._reset()  # forked without register_at_fork having run (not expected; cheap to check)
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="log-shipper", daemon=True)
            thread.start()
            self._thread = thread
            if self._atexit_pid != self._pid:
                # atexit runs before the interpreter stops daemon threads, and before logging.shutdown
                # (registered earlier, run later): the thread still runs while we flush.
                atexit.register(self.close)
                self._atexit_pid = self._pid

    # --- the caller's side: never blocks -----------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe and rendering has no shared state, so threads
        # do not queue up behind each other here. Lines of the shipper's own thread (the client's
        # transport logs) stop here: shipping them would make every bulk request log another line.
        if threading.get_ident() == self._worker_ident:
            return False
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if self._closed:
            records_dropped.labels(reason="closed").inc()
            return
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 -- logging's own contract: report on stderr, never raise
            self.handleError(record)
            return
        if self._thread is None or self._pid != os.getpid():
            self._start()
        try:
            self._queue.put_nowait((line, record.created))
        except queue.Full:
            records_dropped.labels(reason="queue_full").inc()
            with self._drops_lock:
                self._full_drops += 1

    def flush(self) -> None:
        """logging's flush (``logging.shutdown`` calls it): wait at most ``exit_timeout``, see ``flush_wait``."""
        self.flush_wait()

    def flush_wait(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout``, default ``exit_timeout``) until every queued line is shipped or dropped."""
        if self._closed or not self._thread_alive():
            return True  # nothing left that could ship (close() has reported what was not shipped)
        self._wake()
        deadline = time.monotonic() + (self.exit_timeout if timeout is None else timeout)
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def close(self) -> None:
        """Ship what is queued (one attempt, at most ``exit_timeout``), then stop the thread. Idempotent."""
        if not self._closed:
            self._closed = True
            self._stop_thread()
        super().close()

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None or not self._thread_alive():
            return
        self._stop.set()
        self._wake()
        thread.join(self.exit_timeout)
        with self._drops_lock:
            left = 0
            if thread.is_alive():
                # Still sending (a slow or blackholed store): what it holds is lost with the process.
                self._abandoned = True
                left = self._queue.unfinished_tasks
                self._shutdown_drops += left
            dropped = self._shutdown_drops
        if left:
            records_dropped.labels(reason="shutdown").inc(left)
        self._report_queue_full(force=True)
        if dropped:
            self._warn(
                f"log shipping stopped: {dropped} log records not shipped to {self.config.display_url} "
                f"(last error: {self._last_error or 'exit timeout'})",
                force=True,
            )

    def _wake(self) -> None:
        # A full queue needs no wake-up: the thread has a full batch to take.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
            # Not a line: keep it out of unfinished_tasks, which counts lines not yet shipped or dropped.
            self._queue.task_done()

    # --- the shipper's thread ----------------------------------------------------------------

    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        try:
            self._ship_loop()
        except Exception as exc:  # noqa: BLE001 -- a bug here must not silently end shipping for the process
            self._warn(f"log shipper thread failed ({type(exc).__name__}: {exc}); restarting it")
            with self._start_lock:
                self._thread = None  # the next line logged starts a new one
        finally:
            self._worker_ident = None  # a later thread may get the same ident: its lines are not ours

    def _ship_loop(self) -> None:
        static = {"service": self.service, "process": process_name(sys.argv), "pid": os.getpid()}
        static["host"] = socket.gethostname()
        client: Elasticsearch | None = None
        template_installed = False
        batch: list[dict[str, Any]] = []
        failures = 0
        while True:
            self._report_queue_full()
            stopping = self._stop.is_set()
            if not batch:
                batch = self._batch_take(block=not stopping, static=static)
                if not batch:
                    if stopping:
                        return
                    continue
            try:
                if client is None:
                    client = log_store_client_create(self.config, traced=False)
                if not template_installed:
                    template_installed = self._template_install(client)
                batch = self._bulk(client, batch)
            except Exception as exc:  # noqa: BLE001 -- any failure of the store: keep the batch, retry later
                bulk_failures.labels(reason=_failure_reason(exc)).inc()
                self._last_error = f"{type(exc).__name__}: {exc}"
                failures += 1
                self._warn(
                    f"log shipping to {self.config.display_url} failed ({self._last_error}); "
                    f"{len(batch)} records held, {self._queue.qsize()} queued, retrying "
                    f"(attempt {failures})"
                )
            else:
                if not batch:
                    failures = 0
                    continue
                failures += 1  # only 429/5xx items left: Elasticsearch is busy, back off too
            if stopping:
                self._batch_drop(batch, "shutdown")
                batch = []
                continue
            if self._queue.full():
                self._batch_drop(batch, "unavailable")
                batch = []
            self._stop.wait(min(self.max_backoff, self.initial_backoff * 2 ** (failures - 1)))

    def _batch_take(self, *, block: bool, static: dict[str, Any]) -> list[dict[str, Any]]:
        """Up to ``batch_size`` actions: what arrives within ``flush_interval`` of the first line."""
        actions: list[dict[str, Any]] = []
        deadline: float | None = None
        while len(actions) < self.batch_size:
            try:
                if not block:
                    item = self._queue.get_nowait()
                elif deadline is None:
                    # Idle: wake up now and then anyway, so a stop is noticed even without _WAKE.
                    item = self._queue.get(timeout=self.flush_interval)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    item = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if item is _WAKE:
                break
            actions.append(self._action(item, static))
            if deadline is None:
                deadline = time.monotonic() + self.flush_interval
        return actions

    def _action(self, item: tuple[str, float], static: dict[str, Any]) -> dict[str, Any]:
        line, created = item
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            doc = {"event": line}  # a formatter that does not render JSON: ship the text
        timestamp = doc.get("timestamp")
        if not isinstance(timestamp, str):
            timestamp = dt.datetime.fromtimestamp(created, tz=dt.UTC).isoformat().replace("+00:00", "Z")
        doc["@timestamp"] = timestamp
        for key, value in static.items():
            doc.setdefault(key, value)  # a field the log call set itself wins: the line stays what stdout shows
        return {"_index": log_index_name(self.config.index_prefix, timestamp), "_id": uuid.uuid4().hex, "_source": doc}

    def _template_install(self, client: Elasticsearch) -> bool:
        try:
            log_index_template_install(client=client, prefix=self.config.index_prefix)
        except ApiError as exc:
            if exc.status_code != 403:
                raise
            # A key allowed to write documents but not templates: ship anyway (the indices get
            # dynamic mappings) rather than lose every line; say so once.
            self._warn(
                f"no permission to install the index template {self.config.index_prefix} ({exc}); shipping without it",
                force=True,
            )
        return True

    def _bulk(self, client: Elasticsearch, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Index ``batch``; return the actions to retry (429/5xx items). Raises when the request failed as a whole."""
        shipped, errors = helpers.bulk(
            client,
            batch,
            chunk_size=len(batch),
            raise_on_error=False,
            raise_on_exception=True,
            max_retries=0,
        )
        retry_ids: set[str] = set()
        rejected = 0
        for error in cast(list[dict[str, Any]], errors):  # a list: stats_only is off
            item = next(iter(error.values()))
            if item.get("status") in _RETRYABLE_ITEM_STATUS:
                retry_ids.add(item.get("_id"))
            else:
                rejected += 1
                self._last_error = f"document rejected: {item.get('error')}"
        with self._drops_lock:
            if self._abandoned:  # close() already counted these as lost
                return []
        if shipped:
            records_shipped.inc(shipped)
        if rejected:
            records_dropped.labels(reason="rejected").inc(rejected)
            self._warn(f"log store rejected {rejected} log records ({self._last_error})")
        retry = [action for action in batch if action["_id"] in retry_ids]
        self._tasks_done(len(batch) - len(retry))
        return retry

    def _batch_drop(self, batch: list[dict[str, Any]], reason: str) -> None:
        with self._drops_lock:
            if self._abandoned:
                return
            if reason == "shutdown":
                self._shutdown_drops += len(batch)
        records_dropped.labels(reason=reason).inc(len(batch))
        if reason != "shutdown":
            self._warn(
                f"log shipping gave up {len(batch)} log records: {self.config.display_url} unavailable "
                f"and the queue ({self.queue_size}) is full ({self._last_error})"
            )
        self._tasks_done(len(batch))

    def _tasks_done(self, count: int) -> None:
        for _ in range(count):
            self._queue.task_done()

    # --- stderr, rate-limited ------------------------------------------------------------------

    def _report_queue_full(self, *, force: bool = False) -> None:
        with self._drops_lock:
            dropped, self._full_drops = self._full_drops, 0
        if dropped:
            self._warn(
                f"log queue full ({self.queue_size}): {dropped} log records dropped (not shipped to "
                f"{self.config.display_url}; they are on stdout)",
                force=force,
            )

    def _warn(self, message: str, *, force: bool = False) -> None:
        """One JSON line on stderr, at most one per ``warn_interval`` (unless forced), never through logging."""
        with self._warn_lock:
            now = time.monotonic()
            if not force and now - self._warned_at < self.warn_interval:
                self._warnings_suppressed += 1
                return
            self._warned_at = now
            suppressed, self._warnings_suppressed = self._warnings_suppressed, 0
        line: dict[str, Any] = {"timestamp": _now_iso(), "level": "warning", "logger": __name__, "event": message}
        if suppressed:
            line["suppressed_warnings"] = suppressed
        try:
            sys.stderr.write(json.dumps(line) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to report
            pass


_HANDLERS: weakref.WeakSet[ElasticsearchLogHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def handlers_close() -> None:
    """Ship what is queued and stop, for every handler of this process.

    For processes that leave without atexit: Celery's prefork children end with ``os._exit``.
    """
    for handler in list(_HANDLERS):
        handler.close()


def handler_from_settings() -> ElasticsearchLogHandler:
    """The handler of settings.LOGGING (``"()"`` factory), configured from the ELASTICSEARCH_LOGS_* settings."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    config = log_store_config_get()
    if config is None:
        raise ImproperlyConfigured("ELASTICSEARCH_LOGS_URL must be set for the elasticsearch log handler")
    return ElasticsearchLogHandler(
        config=config,
        queue_size=settings.ELASTICSEARCH_LOGS_QUEUE_SIZE,
        batch_size=settings.ELASTICSEARCH_LOGS_BATCH_SIZE,
        flush_interval=settings.ELASTICSEARCH_LOGS_FLUSH_SECONDS,
        exit_timeout=settings.ELASTICSEARCH_LOGS_EXIT_TIMEOUT_SECONDS,
    )
