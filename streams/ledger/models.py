"""One row per event of a dead letter that a replay handled (``DeadLetterReplay``)."""

from __future__ import annotations

from django.db import models


class DeadLetterReplay(models.Model):
    """What a replay did with one event of one dead letter.

    Keyed by where the dead letter sits in the dead-letter topic (topic, topic id, partition,
    offset) and the event's id: a message-level dead letter holds several events, each with its
    own row. The topic id is part of the key because the local broker keeps topics in memory only:
    a recreated topic starts its offsets at 0 again, and its offset 0 is another dead letter.

    A row is written (``pending``) *before* the event is produced, and set to ``sent`` once the
    broker acknowledged it (deleted again when the broker refused it), so two replays running at
    once cannot both send an event (the conditional unique constraint decides), and a replay that
    died in between leaves ``pending`` rows: "in doubt", settled by a later replay as
    ``already_stored`` once the event is found in ClickHouse, and re-sent only on request.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "pending (being sent, or the replay died while sending)"
        SENT = "sent", "sent to the events topic"
        ALREADY_STORED = "already_stored", "already in ClickHouse: not sent"
        INVALID = "invalid", "still refused by the processor: not sent"

    dlq_topic = models.CharField(max_length=255)
    dlq_topic_id = models.CharField(max_length=64, blank=True, help_text="the broker's topic id; empty when unknown")
    dlq_partition = models.IntegerField()
    dlq_offset = models.BigIntegerField()
    event_id = models.CharField(max_length=64, help_text="the event's eventId (lower-case UUID)")
    user_id = models.CharField(max_length=128, blank=True)
    reason = models.CharField(max_length=64, help_text="the dead letter's reason code")
    status = models.CharField(max_length=16, choices=Status.choices)
    detail = models.TextField(blank=True, help_text="why it was not sent, or where it was sent")
    run_id = models.UUIDField(help_text="the replay run that last handled the row")
    replayed_by = models.CharField(max_length=150, blank=True)
    replayed_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["dlq_topic", "dlq_partition", "dlq_offset", "event_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dlq_topic", "dlq_topic_id", "dlq_partition", "dlq_offset", "event_id"],
                name="streams_ledger_replay_position_event",
            ),
            # At most one replay in flight or done per event, whatever dead letters hold it: the
            # worker may dead-letter one event twice (at-least-once, a replay after a crash), and
            # two such letters must not both be sent. The database decides, so two replays run at
            # the same time cannot both claim it.
            models.UniqueConstraint(
                fields=["event_id"],
                condition=models.Q(status__in=["pending", "sent"]),
                name="streams_ledger_replay_one_send_per_event",
            ),
        ]
        indexes = [
            models.Index(fields=["run_id"], name="streams_ledger_replay_run"),
            models.Index(fields=["event_id"], name="streams_ledger_replay_event"),
        ]

    def __str__(self) -> str:
        return f"{self.dlq_topic}[{self.dlq_partition}]@{self.dlq_offset} {self.event_id} {self.status}"
