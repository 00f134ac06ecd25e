"""A process of the service that logs, for the log shipping tests: ``python -m tests.logs.emit_logs``.

Sets up Django from the environment (ELASTICSEARCH_LOGS_URL... as a deployment would), logs a few
lines of one request through structlog and through stdlib logging, inside an OpenTelemetry span
and with an exception, then exits normally: shipping is the atexit flush's job. Prints one last
stdout line ``{"emit_logs": {...}}`` with how long the logging calls took.

Only for the test double: ``ELASTICSEARCH_LOGS_NODE_CLASS`` (a private setting production never
sets) is pointed at ``PlainJsonNode`` before Django configures logging, because osmem refuses the
client's ``compatible-with=8`` media type.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import django


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--request-id", required=True)
    parser.add_argument("--lines", type=int, default=0, help="extra info lines to log")
    parser.add_argument("--fork", action="store_true", help="log in a forked child too (gunicorn/celery prefork)")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")
    from django.conf import settings

    from tests.logs.osmem import PlainJsonNode

    settings.ELASTICSEARCH_LOGS_NODE_CLASS = PlainJsonNode
    django.setup()

    import structlog
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    # A process with tracing on (spans recorded, exported nowhere): its lines carry trace ids.
    trace.set_tracer_provider(TracerProvider())

    structlog.contextvars.bind_contextvars(request_id=args.request_id)
    log = structlog.get_logger("tests.emit")
    stdlib_log = logging.getLogger("tests.emit.stdlib")
    started = time.perf_counter()
    log.info("request_started", path="/events", attempt=1)
    with trace.get_tracer("tests").start_as_current_span("work"):
        stdlib_log.warning("stdlib line %s", "formatted")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("request_failed")
    for index in range(args.lines):
        log.info("bulk_line", index=index)
    if args.fork:
        sys.stdout.flush()  # or the child would print the parent's buffered lines again
        pid = os.fork()
        if pid == 0:
            log.info("in_child")
            sys.stdout.flush()
            sys.exit(0)  # through atexit, as a gunicorn worker leaves
        os.waitpid(pid, 0)
        log.info("after_fork")
    elapsed = time.perf_counter() - started
    sys.stdout.write(json.dumps({"emit_logs": {"seconds": elapsed, "pid": os.getpid()}}) + "\n")


if __name__ == "__main__":
    main()
