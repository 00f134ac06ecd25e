"""``manage.py ensure_topics``: create the service's Kafka topics (idempotent; run once per release)."""

from typing import Any

from django.core.management.base import BaseCommand

from analytics_platform import kafka


class Command(BaseCommand):
    help = "Create missing Kafka topics with explicit partitions and retention."

    def handle(self, *args: Any, **options: Any) -> None:
        created = kafka.topics_ensure()
        self.stdout.write(f"created: {', '.join(created)}" if created else "all topics exist")
