"""Send ClickHouse models (and migrations hinted ``clickhouse=True``) to the ClickHouse database.

Cluster mode (``CLICKHOUSE_CLUSTER`` set): the single-node schema operations of the migrations
(plain MergeTree tables, RunSQL without ``ON CLUSTER``) are not run; the operations hinted
``cluster_schema=True`` (the ON CLUSTER DDL of analytics_platform/warehouse.py) run instead, and
only there. Single-node mode runs exactly what it always ran.
"""

from __future__ import annotations

from typing import Any

from clickhouse_backend.models import ClickhouseModel
from django.apps import apps
from django.conf import settings
from django.db.models import Model

CLICKHOUSE_DB = "clickhouse"
#: ClickHouse models the code no longer has but the migration history creates (streams 0001) before
#: a later migration drops their tables (streams 0009): their operations stay on ClickHouse.
REMOVED_CLICKHOUSE_MODELS = frozenset(
    {"streams.eventrollupminute", "streams.eventrolluphour", "streams.viewrollupminute"}
)


def _clickhouse_labels() -> set[str]:
    return {
        model._meta.label_lower
        for model in apps.get_models()
        if issubclass(model, ClickhouseModel) and not model._meta.abstract
    } | REMOVED_CLICKHOUSE_MODELS


class ClickHouseRouter:
    def __init__(self) -> None:
        self._labels: set[str] | None = None

    @property
    def labels(self) -> set[str]:
        # Models are not loaded when routers are built, so resolve the set on first use.
        if self._labels is None:
            self._labels = _clickhouse_labels()
        return self._labels

    def _route(self, model: type[Model], hints: dict[str, Any]) -> str | None:
        if model._meta.label_lower in self.labels or hints.get("clickhouse"):
            return CLICKHOUSE_DB
        return None

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model, hints)

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return self._route(model, hints)

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if hints.get("cluster_schema"):
            return db == CLICKHOUSE_DB and bool(settings.CLICKHOUSE_CLUSTER)
        if hints.get("clickhouse") or f"{app_label}.{model_name}" in self.labels:
            return db == CLICKHOUSE_DB and not settings.CLICKHOUSE_CLUSTER
        if db == CLICKHOUSE_DB:
            return False
        return None
