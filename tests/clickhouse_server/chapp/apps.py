from django.apps import AppConfig


class ChappConfig(AppConfig):
    """A ClickHouse-only app used to prove django-clickhouse-backend works on the embedded server."""

    name = "tests.clickhouse_server.chapp"
    label = "chapp"
