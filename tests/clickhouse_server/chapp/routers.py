from typing import Any

CLICKHOUSE_APPS = {"chapp"}


class ClickHouseRouter:
    """Send the ClickHouse app to the ``clickhouse`` alias, everything else to ``default``."""

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return "clickhouse" if model._meta.app_label in CLICKHOUSE_APPS else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return "clickhouse" if model._meta.app_label in CLICKHOUSE_APPS else None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label in CLICKHOUSE_APPS:
            return db == "clickhouse"
        return db != "clickhouse"
