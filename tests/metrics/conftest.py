"""Fixtures of the metrics tests: generated ClickHouse data with known truth, users, tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from analytics_platform.clickhouse import client_get
from tests.clickhouse_tables import truncate_all
from tests.metrics import data as gen

PASSWORD = "correct-horse-battery-staple"


def dataset_base() -> datetime:
    """Three whole days ending at today's midnight UTC: inside every rollup's retention."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=3)


@pytest.fixture(scope="session")
def dataset() -> gen.Dataset:
    return gen.generate(base=dataset_base())


def _load(dataset: gen.Dataset) -> None:
    client = client_get()
    try:
        loaded = (
            client.execute("SELECT count() FROM events")[0][0],
            client.execute("SELECT count() FROM view_summaries")[0][0],
        )
        if loaded != (len(dataset.events), len(dataset.views)):
            # Another test's rows (or a flush that emptied only the model tables) are there:
            # start from empty tables, rollups included, so the truth is exactly this dataset.
            truncate_all(client)
            gen.insert(client, dataset)
    finally:
        client.disconnect()


@pytest.fixture(scope="session")
def _clickhouse_loaded(django_db_setup: None, django_db_blocker: Any, dataset: gen.Dataset) -> None:
    with django_db_blocker.unblock():
        _load(dataset)


@pytest.fixture
def loaded(_clickhouse_loaded: None, dataset: gen.Dataset) -> Iterator[gen.Dataset]:
    # Transactional tests flush every table (ClickHouse ones too); reload if an earlier one did.
    _load(dataset)
    yield dataset


@pytest.fixture
def staff_user(db: None) -> Any:
    return get_user_model().objects.create_user(
        username="analyst", password=PASSWORD, is_staff=True, is_superuser=True, email="a@example.com"
    )


@pytest.fixture
def token(staff_user: Any) -> str:
    response = APIClient().post("/auth/token", {"username": "analyst", "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    access: str = response.json()["access"]
    return access


@pytest.fixture
def api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client
