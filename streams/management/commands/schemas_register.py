"""``manage.py schemas_register``: check every topic schema against the registry, then register them.

Run before anything is produced with a new release (the dev stack runs it before the stream worker,
the deploy's migrate Job before the rollout): an incompatible schema change fails here, with the
registry's reasons, and nothing is registered.
"""

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from streams.topic_schemas import SchemaRefusedError, schemas_register


class Command(BaseCommand):
    help = "Check every topic schema's compatibility with the schema registry, then register them all."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--check", action="store_true", help="check only; register nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            registrations = schemas_register(check_only=options["check"])
        except SchemaRefusedError as exc:
            raise CommandError(str(exc)) from exc
        for registration in registrations:
            self.stdout.write(f"{registration.subject}: id {registration.schema_id}, version {registration.version}")
        if options["check"]:
            self.stdout.write("every schema is compatible with the registry's versions")
