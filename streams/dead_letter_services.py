"""Replaying dead letters after a fix: their original events back into the events topic, once.

A replay re-produces the original bytes of the chosen dead letters' events to the ``events``
topic as v2 batch messages (``{"v": 2, "events": [...]}``) on the partition ingest would have used,
``partition_of(userId)``, so they go through the processor again like any accepted event. A
message-level dead letter (its envelope was refused, or processing raised) replays the events of
its envelope when the envelope can now be read.

Never counted twice, by three checks before anything is sent:

* the replay ledger (``streams.ledger.DeadLetterReplay``, Django's default database): an event
  that a replay already sent or found stored is not sent again, whichever dead letter holds it
  (the worker may dead-letter one event twice, at-least-once); a row is claimed (``pending``)
  before sending, under a conditional unique constraint, so two replays at once cannot both send;
* ClickHouse: an event whose ``eventId`` is already in ``events`` was stored after all (a retry
  by the client, a sink failure that was retryable after all) and is not sent;
* the processor's own validation (``streams.processors.event_row``): an event that would be
  refused again is reported, not sent, and can be replayed after a further fix.

Why the checks are needed: the stream processor deduplicates by eventId only within its dedup
window (24 h of event time), so a replay days later would be counted again. Within that window the
processor also drops a replayed event it already saw, which is what happens to a ``clickhouse_rejected``
event replayed within 24 h (its id was recorded before the sink refused its row): such an event is
reported ``sent`` but counted in ``streams_duplicate_events_total`` and not stored; check with
``--wait`` (README, "Dead letters").
"""

from __future__ import annotations

import getpass
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson
from confluent_kafka import KafkaError, KafkaException, Producer
from django.conf import settings

from analytics_platform import event_format, kafka, warehouse
from analytics_platform.clickhouse import client_get
from streams.dead_letter_selectors import DeadLetterEntry, DeadLetterFilter, dead_letters_read
from streams.ledger.models import DeadLetterReplay
from streams.processors import event_row

logger = logging.getLogger(__name__)

# Results of one event of a replay (``ReplayOutcome.result``).
SENT = "sent"
WOULD_SEND = "would_send"  # --dry-run
ALREADY_REPLAYED = "already_replayed"  # the ledger: sent (or found stored) by an earlier replay
ALREADY_STORED = "already_stored"  # in ClickHouse ``events`` already
DUPLICATE = "duplicate"  # another dead letter of this run holds the same event and is the one sent
INVALID = "invalid"  # the processor would refuse it again
IN_DOUBT = "in_doubt"  # an earlier replay claimed it and did not finish; not in ClickHouse
UNREADABLE = "unreadable"  # no event can be read out of the dead letter
FAILED = "failed"  # the broker did not acknowledge it: nothing recorded, replay again

CLICKHOUSE_IDS_PER_QUERY = 1000
LEDGER_BATCH = 1000  # rows per ledger query or insert
_Status = DeadLetterReplay.Status


class _Envelope(msgspec.Struct):
    """A message's events as their original bytes (what ``processors.decoding`` reads too)."""

    events: list[msgspec.Raw]


_envelope = msgspec.json.Decoder(_Envelope)


@dataclass
class ReplayOutcome:
    """What the replay did with one event of one dead letter (or with an unreadable dead letter)."""

    dlq_partition: int
    dlq_offset: int
    reason: str
    result: str
    event_id: str = ""
    user_id: str = ""
    detail: str = ""
    payload: bytes = field(default=b"", repr=False)
    ts: int | None = None  # the event's time (epoch ms) as it is stored in ``events.ts``, when readable

    def as_json(self) -> dict[str, Any]:
        return {
            "dlqPartition": self.dlq_partition,
            "dlqOffset": self.dlq_offset,
            "reason": self.reason,
            "result": self.result,
            "eventId": self.event_id or None,
            "userId": self.user_id or None,
            "detail": self.detail,
        }


@dataclass
class ReplayReport:
    run_id: uuid.UUID
    dry_run: bool
    dlq_topic: str
    outcomes: list[ReplayOutcome]
    covered: dict[int, list[tuple[int, int]]]  # DLQ partition -> inclusive offset ranges of the dead letters chosen

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = defaultdict(int)
        for outcome in self.outcomes:
            result[outcome.result] += 1
        return dict(sorted(result.items()))

    def by_result(self, result: str) -> list[ReplayOutcome]:
        return [o for o in self.outcomes if o.result == result]


def dead_letter_replay(
    *,
    filters: DeadLetterFilter,
    dry_run: bool = False,
    operator: str | None = None,
    resend_in_doubt: bool = False,
    timeout: float = 60.0,
) -> ReplayReport:
    """Replay the events of the dead letters matching ``filters`` (see the module docstring).

    Raises ``KafkaException`` when the dead-letter topic cannot be read to its end.
    """
    run_id = uuid.uuid4()
    operator = operator or _operator()
    dlq_topic = kafka.topic_name(event_format.EVENTS_DLQ_TOPIC)
    entries = [e for e in dead_letters_read(timeout=timeout, topic=dlq_topic) if filters.matches(e)]
    outcomes = [o for entry in entries for o in _expand(entry, filters.event_ids)]
    # Covered: the dead letters this replay looked at (with --event-id, only those holding one).
    report = ReplayReport(
        run_id, dry_run, dlq_topic, outcomes, _ranges({(o.dlq_partition, o.dlq_offset) for o in outcomes})
    )
    candidates = [o for o in outcomes if o.result == ""]
    if not candidates:
        return report
    topic_id = "" if dry_run else _topic_id(dlq_topic)

    for outcome in candidates:
        outcome.result, outcome.detail = _validate(outcome.payload)

    # The ledger: one row per event that a replay sent, is sending, or found stored.
    ids = {o.event_id for o in candidates}
    ledger = _ledger_by_event(ids)
    stored = _stored_event_ids({o.event_id: o.ts for o in candidates})
    seen_in_run: set[str] = set()
    to_send: list[ReplayOutcome] = []
    for outcome in candidates:
        rows = ledger.get(outcome.event_id, [])
        done = [r for r in rows if r.status in (_Status.SENT, _Status.ALREADY_STORED)]
        pending = [r for r in rows if r.status == _Status.PENDING]
        if done:
            outcome.result = ALREADY_REPLAYED
            outcome.detail = (
                f"{done[0].status} by {done[0].replayed_by or '?'} at {done[0].replayed_at:%Y-%m-%dT%H:%M:%SZ}"
            )
        elif outcome.event_id in stored:
            outcome.result, outcome.detail = ALREADY_STORED, "eventId already in ClickHouse events"
            if not dry_run:
                _settle_stored(
                    outcome, pending, dlq_topic=dlq_topic, topic_id=topic_id, run_id=run_id, operator=operator
                )
        elif outcome.result == INVALID:
            if not dry_run:
                _record(
                    outcome, _Status.INVALID, dlq_topic=dlq_topic, topic_id=topic_id, run_id=run_id, operator=operator
                )
        elif outcome.event_id in seen_in_run:
            outcome.result, outcome.detail = DUPLICATE, "the same eventId is replayed from another dead letter"
        elif pending and not resend_in_doubt:
            outcome.result = IN_DOUBT
            outcome.detail = (
                f"claimed by replay {pending[0].run_id} ({pending[0].replayed_by or '?'}) that did not finish;"
                " not in ClickHouse: re-send with --resend-in-doubt once that replay is known dead"
            )
        else:
            seen_in_run.add(outcome.event_id)
            to_send.append(outcome)
            if pending and not dry_run:  # --resend-in-doubt: this run takes the dead run's claim over
                DeadLetterReplay.objects.filter(pk__in=[r.pk for r in pending]).delete()

    partitions = _events_partitions() if to_send else 0
    if dry_run:
        for outcome in to_send:
            partition = event_format.partition_of(outcome.user_id, partitions)
            outcome.result, outcome.detail = WOULD_SEND, f"to partition {partition}"
        return report
    claimed = _claim(to_send, dlq_topic=dlq_topic, topic_id=topic_id, run_id=run_id, operator=operator)
    _send(claimed, partitions=partitions, timeout=timeout)
    # One UPDATE per produced message (its events share the detail), not one per event.
    sent_by_detail: dict[str, list[str]] = defaultdict(list)
    for outcome in claimed:
        if outcome.result == SENT:
            sent_by_detail[outcome.detail].append(outcome.event_id)
    mine = DeadLetterReplay.objects.filter(run_id=run_id, status=_Status.PENDING)
    for detail, sent_ids in sent_by_detail.items():
        mine.filter(event_id__in=sent_ids).update(status=_Status.SENT, detail=detail)
    failed = [o.event_id for o in claimed if o.result == FAILED]
    for start in range(0, len(failed), LEDGER_BATCH):  # refused by the broker: not sent, free to replay again
        mine.filter(event_id__in=failed[start : start + LEDGER_BATCH]).delete()
    # IN_DOUBT (no answer in time): the claim stays; a later replay settles it.
    logger.info("dead letters replayed", extra={"run_id": str(run_id), "counts": report.counts()})
    return report


def dead_letters_wait_stored(*, outcomes: Iterable[ReplayOutcome], timeout: float, interval: float = 2.0) -> set[str]:
    """The eventIds of ``outcomes`` not in ClickHouse ``events`` after waiting up to ``timeout`` s."""
    times = {o.event_id: o.ts for o in outcomes}
    missing = set(times)
    deadline = time.monotonic() + timeout
    while missing:
        missing -= _stored_event_ids({i: times[i] for i in missing})
        if not missing or time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return missing


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in a container
        return ""


def _expand(entry: DeadLetterEntry, wanted: frozenset[str]) -> list[ReplayOutcome]:
    """The events a dead letter holds, as outcomes still to decide (``result`` "") or unreadable."""
    reason = entry.reason

    def unreadable(detail: str) -> list[ReplayOutcome]:
        # With --event-id, an unreadable dead letter is reported only when a wanted id occurs in its
        # bytes: the operator asked about those events, not about every broken message.
        if wanted:
            text = entry.payload().decode("utf-8", "replace").lower()
            if not any(i in text for i in wanted):
                return []
        return [ReplayOutcome(entry.partition, entry.offset, reason, UNREADABLE, detail=detail)]

    if entry.record.get("type") is None:
        return unreadable("not a dead-letter record")
    payload = entry.payload()
    if not payload:
        return unreadable("the dead letter holds no payload")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return unreadable(f"payload is not JSON: {exc}")
    if type(body) is dict and "tick" in body and "events" not in body and "eventId" not in body:
        return unreadable("a control tick of the worker, not an event: nothing to replay")
    if type(body) is dict and "events" in body and "eventId" not in body:
        # A whole message: its events, as their original bytes.
        try:
            raws: list[bytes] = [bytes(raw) for raw in _envelope.decode(payload).events]
        except (msgspec.DecodeError, RecursionError) as exc:
            return unreadable(f"the message's envelope cannot be read: {exc}"[:500])
    else:
        raws = [payload]
    outcomes = []
    for raw in raws:
        event_id, user_id, ts = _ids(raw)
        if wanted and (event_id or "") not in wanted:
            continue
        outcome = ReplayOutcome(
            entry.partition, entry.offset, reason, "", event_id or "", user_id or "", payload=raw, ts=ts
        )
        if not event_id or not user_id:
            outcome.result, outcome.detail = INVALID, "no eventId or userId can be read from the event"
        outcomes.append(outcome)
    if not outcomes and not wanted:
        return unreadable("the message holds no events")
    return outcomes


def _ids(raw: bytes) -> tuple[str | None, str | None, int | None]:
    """The eventId (lower-case), userId and event time of an event's bytes, those that can be read."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, None
    if type(body) is not dict:
        return None, None, None
    event_id, user_id, ts = body.get("eventId"), body.get("userId"), body.get("timestamp")
    return (
        event_id.lower() if isinstance(event_id, str) else None,
        user_id if isinstance(user_id, str) else None,
        ts if type(ts) is int else None,
    )


def _validate(payload: bytes) -> tuple[str, str]:
    """("", "") when the processor accepts the event now, else (INVALID, why)."""
    try:
        event_row(orjson.loads(payload), partition=0, offset=0)
    except Exception as exc:  # noqa: BLE001 -- whatever the processor raises, it would dead-letter the event
        return INVALID, f"still refused: {type(exc).__name__}: {exc}"[:500]
    return "", ""


def _ledger_by_event(event_ids: set[str]) -> dict[str, list[DeadLetterReplay]]:
    rows: dict[str, list[DeadLetterReplay]] = defaultdict(list)
    ids = sorted(event_ids)
    for start in range(0, len(ids), LEDGER_BATCH):
        for row in DeadLetterReplay.objects.filter(event_id__in=ids[start : start + LEDGER_BATCH]):
            rows[row.event_id].append(row)
    return rows


def _stored_event_ids(events: dict[str, int | None]) -> set[str]:
    """The ones of ``events`` (eventId -> event time in ms, when known) already in ClickHouse ``events``.

    Looked up in chunks of ids sorted by event time, each bounded by its chunk's time range: the
    table is partitioned by day of ``ts`` and ordered by type first, so without the bound every
    chunk would read the whole table.
    """
    ids = sorted((ts if ts is not None else -1, i) for i, ts in events.items() if _is_uuid(i))
    if not ids:
        return set()
    client = client_get()
    found: set[str] = set()
    try:
        for start in range(0, len(ids), CLICKHOUSE_IDS_PER_QUERY):
            chunk = ids[start : start + CLICKHOUSE_IDS_PER_QUERY]
            params: dict[str, Any] = {"ids": [uuid.UUID(i) for _, i in chunk]}
            query = f"SELECT DISTINCT toString(event_id) FROM {warehouse.EVENTS} WHERE event_id IN %(ids)s"  # noqa: S608 -- a code constant
            if chunk[0][0] >= 0:  # every time known (-1 sorts first)
                params["lo"], params["hi"] = chunk[0][0], chunk[-1][0]
                query += " AND ts BETWEEN fromUnixTimestamp64Milli(%(lo)s) AND fromUnixTimestamp64Milli(%(hi)s)"
            found.update(row[0] for row in client.execute(query, params))
    finally:
        client.disconnect()
    return found


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _ledger_row(
    outcome: ReplayOutcome, status: str, *, dlq_topic: str, topic_id: str, run_id: uuid.UUID, operator: str
) -> DeadLetterReplay:
    return DeadLetterReplay(
        dlq_topic=dlq_topic,
        dlq_topic_id=topic_id,
        dlq_partition=outcome.dlq_partition,
        dlq_offset=outcome.dlq_offset,
        event_id=outcome.event_id[:64],  # a valid one is a 36-character UUID; an invalid one is only reported
        user_id=outcome.user_id[:128],
        reason=outcome.reason[:64],
        status=status,
        detail=outcome.detail,
        run_id=run_id,
        replayed_by=operator[:150],
    )


def _record(
    outcome: ReplayOutcome, status: str, *, dlq_topic: str, topic_id: str, run_id: uuid.UUID, operator: str
) -> None:
    """Write (or overwrite) the row of this dead letter's event with a final status."""
    DeadLetterReplay.objects.update_or_create(
        dlq_topic=dlq_topic,
        dlq_topic_id=topic_id,
        dlq_partition=outcome.dlq_partition,
        dlq_offset=outcome.dlq_offset,
        event_id=outcome.event_id[:64],
        defaults={
            "user_id": outcome.user_id[:128],
            "reason": outcome.reason[:64],
            "status": status,
            "detail": outcome.detail,
            "run_id": run_id,
            "replayed_by": operator[:150],
        },
    )


def _settle_stored(
    outcome: ReplayOutcome,
    pending: list[DeadLetterReplay],
    *,
    dlq_topic: str,
    topic_id: str,
    run_id: uuid.UUID,
    operator: str,
) -> None:
    """An event found in ClickHouse: done for good (an in-doubt claim on it was sent after all)."""
    if pending:
        DeadLetterReplay.objects.filter(pk__in=[r.pk for r in pending]).update(
            status=_Status.ALREADY_STORED, detail="found in ClickHouse after an unfinished replay"
        )
    _record(outcome, _Status.ALREADY_STORED, dlq_topic=dlq_topic, topic_id=topic_id, run_id=run_id, operator=operator)


def _claim(
    outcomes: list[ReplayOutcome], *, dlq_topic: str, topic_id: str, run_id: uuid.UUID, operator: str
) -> list[ReplayOutcome]:
    """The outcomes this run may send: a ``pending`` row written for each; the others lost a race.

    Inserted in bulk with conflicts ignored: a row that would break a unique constraint (another
    replay holds the event, or already settled this position) is left out by the database itself,
    so the rows carrying this run's id afterwards are exactly this run's claims.
    """
    ids = [o.event_id for o in outcomes]
    for start in range(0, len(ids), LEDGER_BATCH):
        # Rows left ``invalid`` by an earlier run: the event passes validation now, the claim replaces them.
        DeadLetterReplay.objects.filter(status=_Status.INVALID, event_id__in=ids[start : start + LEDGER_BATCH]).delete()
    DeadLetterReplay.objects.bulk_create(
        [
            _ledger_row(o, _Status.PENDING, dlq_topic=dlq_topic, topic_id=topic_id, run_id=run_id, operator=operator)
            for o in outcomes
        ],
        batch_size=LEDGER_BATCH,
        ignore_conflicts=True,
    )
    mine = set(
        DeadLetterReplay.objects.filter(run_id=run_id, status=_Status.PENDING).values_list(
            "dlq_partition", "dlq_offset", "event_id"
        )
    )
    claimed = []
    for outcome in outcomes:
        if (outcome.dlq_partition, outcome.dlq_offset, outcome.event_id) in mine:
            claimed.append(outcome)
        else:
            outcome.result, outcome.detail = ALREADY_REPLAYED, "claimed by another replay running at the same time"
    return claimed


def _events_partitions() -> int:
    """The events topic's partition count (``partition_of`` needs it, as ingest's producer does)."""
    topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    metadata = Producer(kafka.client_config()).list_topics(topic, timeout=30)
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaException(f"events topic {topic!r} not available")
    return len(info.partitions)


def _send(outcomes: list[ReplayOutcome], *, partitions: int, timeout: float) -> None:
    """Produce the events as v2 messages per partition; each outcome ends SENT, FAILED or IN_DOUBT."""
    if not outcomes:
        return
    topic = kafka.topic_name(event_format.EVENTS_TOPIC)
    by_partition: dict[int, list[ReplayOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_partition[event_format.partition_of(outcome.user_id, partitions)].append(outcome)
    producer = Producer(kafka.client_config(**{"acks": "all", "enable.idempotence": True, "linger.ms": 5}))
    limit = settings.INGEST_MAX_MESSAGE_BYTES

    def delivered(batch: list[ReplayOutcome]) -> Any:
        def on_delivery(error: Any, message: Any) -> None:
            for outcome in batch:
                if error is None:
                    outcome.result = SENT
                    outcome.detail = f"{topic}[{message.partition()}]@{message.offset()}"
                elif error.code() == KafkaError._MSG_TIMED_OUT:  # it may have been written all the same
                    outcome.result, outcome.detail = IN_DOUBT, f"delivery timed out: {error}; the claim stays"
                else:
                    outcome.result, outcome.detail = FAILED, f"not acknowledged: {error}"

        return on_delivery

    for partition, items in sorted(by_partition.items()):
        for batch in _batches(items, limit):
            # The original bytes of each event, unchanged, in a v2 replay envelope: stored even when the
            # processor remembers the eventId (event_format.py, "Replays"); the checks above ensured
            # none of them is stored already.
            value = event_format.REPLAY_HEAD + b",".join(o.payload for o in batch) + b"]}"
            for outcome in batch:
                outcome.result = IN_DOUBT
                outcome.detail = f"no answer from the broker within {timeout:g}s: may have been sent; the claim stays"
            while True:
                try:
                    producer.produce(topic, value, partition=partition, on_delivery=delivered(batch))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
    producer.flush(timeout)


def _batches(items: list[ReplayOutcome], limit: int) -> Iterable[list[ReplayOutcome]]:
    batch: list[ReplayOutcome] = []
    size = 32
    for item in items:
        if batch and size + len(item.payload) + 1 > limit:
            yield batch
            batch, size = [], 32
        batch.append(item)
        size += len(item.payload) + 1
    if batch:
        yield batch


def _topic_id(topic: str) -> str:
    from streams.app import topic_id_get  # the worker's own; imported late, it pulls in Quix

    try:
        return topic_id_get(topic)
    except KafkaException:
        return ""


def _ranges(positions: set[tuple[int, int]]) -> dict[int, list[tuple[int, int]]]:
    """(partition, offset) pairs as inclusive offset ranges per partition."""
    offsets: dict[int, list[int]] = defaultdict(list)
    for partition, offset in positions:
        offsets[partition].append(offset)
    result: dict[int, list[tuple[int, int]]] = {}
    for partition, values in sorted(offsets.items()):
        ranges: list[tuple[int, int]] = []
        for offset in sorted(values):
            if ranges and offset == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], offset)
            else:
                ranges.append((offset, offset))
        result[partition] = ranges
    return result
