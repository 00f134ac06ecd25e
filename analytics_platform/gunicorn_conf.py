"""Gunicorn settings for the web process (see README: "Process model").

Threads, not async: the ingest view spends its wall time waiting for Kafka acknowledgements
inside librdkafka (which releases the GIL), so a few threads per process keep the CPU busy while
requests wait, and every Django library works unchanged. One process per core takes the rest.
"""

import gc
import os

from prometheus_client import multiprocess

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "16"))
keepalive = 30
timeout = 60
graceful_timeout = 20
max_requests = 0
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
wsgi_app = "analytics_platform.wsgi:application"


def child_exit(server: object, worker: object) -> None:
    # Drop a dead worker's live gauges from the multi-process Prometheus registry.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]


def post_worker_init(worker: object) -> None:
    # A 1,000-event request allocates tens of thousands of objects; with the default gen-0
    # threshold (700) the collector ran dozens of times per request over every long-lived
    # object. Freezing what startup built and collecting less often cut ingest CPU per event
    # (measured with bench/bench_ingest.py; see README "Process model").
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)
