from django.apps import AppConfig


class LedgerConfig(AppConfig):
    name = "streams.ledger"
    label = "streams_ledger"
    verbose_name = "Dead-letter replays"
