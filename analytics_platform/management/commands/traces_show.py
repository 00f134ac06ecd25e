"""``manage.py traces_show``: the local span store's traces, as trees."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from analytics_platform.trace_store import SpanStore, tree, tree_lines


class Command(BaseCommand):
    help = (
        "Without --trace-id: the latest traces' root spans. With it: that trace as a tree, then every trace "
        "joined to it by links (an event's send and process spans, the INSERT that stored it), unless --no-links."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--trace-id", help="32 hex digits")
        parser.add_argument("--no-links", action="store_true", help="only this trace, not the linked ones")
        parser.add_argument("--limit", type=int, default=20, help="how many traces to list (20)")
        parser.add_argument("--store", default=str(settings.OTLP_RECEIVER_STORE), help="the SQLite file")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["store"])
        if not path.exists():
            raise CommandError(f"no span store at {path}: is the receiver running (manage.py otlp_receiver)?")
        store = SpanStore(path)
        try:
            trace_id = options["trace_id"]
            if trace_id is None:
                for root in store.recent_traces(options["limit"]):
                    self.stdout.write(
                        f"{root.trace_id}  {root.name} [{root.service}] {root.duration_ms:.2f} ms {root.status}"
                    )
                return
            if not re.fullmatch(r"[0-9a-fA-F]{32}", trace_id):
                raise CommandError("--trace-id takes 32 hex digits")
            traces = [trace_id.lower()] if options["no_links"] else store.connected_traces(trace_id)
            for index, one in enumerate(traces):
                spans = store.spans(one)
                if not spans:
                    if index == 0:
                        raise CommandError(f"no spans of trace {one}")
                    continue
                self.stdout.write(f"trace {one}" + ("" if index == 0 else " (linked)"))
                for line in tree_lines(tree(spans), depth=1):
                    self.stdout.write(line)
        finally:
            store.close()
