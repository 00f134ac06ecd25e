"""``manage.py dead_letters list|count|replay``: the dead-letter topic for operators (README, "Dead letters")."""

from __future__ import annotations

from argparse import ArgumentParser, ArgumentTypeError
from datetime import UTC, datetime
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError

from streams import dead_letters
from streams.dead_letter_selectors import COUNT_KEYS, DeadLetterFilter, dead_letter_count, dead_letter_list
from streams.dead_letter_services import SENT, dead_letter_replay, dead_letters_wait_stored

DETAIL_CHARS = 160  # of a list line; --json prints all of it


def _instant(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC (dead letters are stamped in UTC)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _filters(options: dict[str, Any]) -> DeadLetterFilter:
    since, until = options.get("since"), options.get("until")
    if since is not None and until is not None and since >= until:
        raise CommandError("--since must be before --until")
    return DeadLetterFilter(
        reasons=frozenset(options.get("reason") or ()),
        stages=frozenset(options.get("stage") or ()),
        since=since,
        until=until,
        event_ids=frozenset(i.lower() for i in options.get("event_id") or ()),
    )


class Command(BaseCommand):
    help = (
        "List, count and replay the dead letters of the events-dlq topic. The topic is read from the "
        "beginning without a consumer group (nothing is committed); replay re-sends the original events "
        "of the chosen dead letters, never twice and never an event already in ClickHouse."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        list_parser = actions.add_parser("list", help="one line per dead letter, oldest first")
        count_parser = actions.add_parser("count", help="counts by reason, stage, day or field")
        replay_parser = actions.add_parser("replay", help="re-send the chosen dead letters' events after a fix")
        for sub in (list_parser, count_parser, replay_parser):
            sub.add_argument(
                "--reason", action="append", choices=sorted(dead_letters.REASONS), help="reason code (repeatable)"
            )
            sub.add_argument("--stage", action="append", choices=["decode", "sink"], help="stage (repeatable)")
            sub.add_argument("--since", type=_instant, help="dead letters at or after this time (ISO 8601, UTC)")
            sub.add_argument("--until", type=_instant, help="dead letters before this time (ISO 8601, UTC)")
            sub.add_argument("--timeout", type=float, default=60.0, help="seconds to read the topic to its end")
        list_parser.add_argument("--limit", type=int, default=None, help="at most this many (the oldest)")
        list_parser.add_argument("--json", action="store_true", help="JSON lines: the whole record and its position")
        count_parser.add_argument(
            "--by", action="append", choices=COUNT_KEYS, help="group by (repeatable; default: reason)"
        )
        replay_parser.add_argument("--event-id", action="append", help="only this eventId (repeatable)")
        replay_parser.add_argument("--dry-run", action="store_true", help="report what would be sent; change nothing")
        replay_parser.add_argument("--operator", default=None, help="who replays, for the ledger (default: OS user)")
        replay_parser.add_argument(
            "--resend-in-doubt",
            action="store_true",
            help="re-send events claimed by a replay that died before the broker answered",
        )
        replay_parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            help="then wait up to this many seconds for the sent events in ClickHouse",
        )
        replay_parser.add_argument("--json", action="store_true", help="JSON lines: one per event handled")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        filters = _filters(options)
        if action == "list":
            self._list(filters, options)
        elif action == "count":
            self._count(filters, options)
        else:
            self._replay(filters, options)

    def _list(self, filters: DeadLetterFilter, options: dict[str, Any]) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        for entry in dead_letter_list(filters=filters, limit=options["limit"], timeout=options["timeout"]):
            if options["json"]:
                self.stdout.write(orjson.dumps(entry.as_json()).decode())
                continue
            record = entry.record
            detail = " ".join(str(record.get("detail") or "").split())[:DETAIL_CHARS]
            self.stdout.write(
                "\t".join(
                    (
                        entry.time.isoformat(timespec="milliseconds"),
                        entry.reason,
                        entry.stage or "-",
                        f"field={record.get('field') or '-'}",
                        f"eventId={record.get('eventId') or '-'}",
                        f"source={record.get('topic') or '?'}[{record.get('partition')}]@{record.get('offset')}",
                        f"dlq=[{entry.partition}]@{entry.offset}",
                        detail,
                    )
                )
            )

    def _count(self, filters: DeadLetterFilter, options: dict[str, Any]) -> None:
        by = options["by"] or ["reason"]
        rows = dead_letter_count(filters=filters, by=by, timeout=options["timeout"])
        self.stdout.write("\t".join((*by, "count")))
        for key, count in rows:
            self.stdout.write("\t".join((*key, str(count))))
        self.stdout.write("\t".join(("total", *([""] * (len(by) - 1)), str(sum(c for _, c in rows)))))

    def _replay(self, filters: DeadLetterFilter, options: dict[str, Any]) -> None:
        report = dead_letter_replay(
            filters=filters,
            dry_run=options["dry_run"],
            operator=options["operator"],
            resend_in_doubt=options["resend_in_doubt"],
            timeout=options["timeout"],
        )
        missing: set[str] = set()
        sent = report.by_result(SENT)
        if sent and options["wait"] > 0:
            missing = dead_letters_wait_stored(outcomes=sent, timeout=options["wait"])
        if options["json"]:
            for outcome in report.outcomes:
                line = outcome.as_json()
                if options["wait"] > 0 and outcome.result == SENT:
                    line["stored"] = outcome.event_id not in missing
                self.stdout.write(orjson.dumps(line).decode())
            return
        for outcome in report.outcomes:
            self.stdout.write(
                "\t".join(
                    (
                        outcome.result,
                        f"dlq=[{outcome.dlq_partition}]@{outcome.dlq_offset}",
                        outcome.reason,
                        f"eventId={outcome.event_id or '-'}",
                        outcome.detail,
                    )
                )
            )
        covered = (
            "; ".join(
                f"[{p}] " + ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)
                for p, ranges in report.covered.items()
            )
            or "none"
        )
        counts = ", ".join(f"{k} {v}" for k, v in report.counts().items()) or "nothing to replay"
        prefix = "dry run: " if report.dry_run else ""
        self.stdout.write(f"{prefix}run {report.run_id}: {counts}")
        self.stdout.write(f"dead letters covered ({report.dlq_topic}, partition offsets): {covered}")
        if options["wait"] > 0 and sent:
            self.stdout.write(
                f"stored in ClickHouse within {options['wait']:g}s: {len(sent) - len(missing)} of {len(sent)}"
                + (f"; not (yet) stored: {', '.join(sorted(missing)[:20])}" if missing else "")
            )
