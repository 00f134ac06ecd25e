"""``manage.py otlp_receiver``: a local OTLP/HTTP endpoint that stores spans for ``traces_show``."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from analytics_platform.trace_store import ReceiverServer, SpanStore


class Command(BaseCommand):
    help = "Receive spans over OTLP/HTTP on 127.0.0.1 (POST /v1/traces, protobuf) into a local SQLite store."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=settings.OTLP_RECEIVER_PORT, help="0: any free port")
        parser.add_argument("--store", default=str(settings.OTLP_RECEIVER_STORE), help="the SQLite file")

    def handle(self, *args: Any, **options: Any) -> None:
        store = SpanStore(Path(options["store"]))
        server = ReceiverServer(store, port=options["port"], token=settings.OTEL_EXPORTER_OTLP_TOKEN)
        # SIGTERM from the devstack or a test: stop serving, close the store.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        self.stdout.write(f"otlp receiver listening on 127.0.0.1:{server.server_address[1]}")
        self.stdout.flush()
        try:
            server.serve_forever(poll_interval=0.2)
        finally:
            server.server_close()
            store.close()
