"""Minimal Django settings for the django-clickhouse-backend checks (independent of the project's).

The embedded server's port comes from ``CH_TEST_PORT``, its password from ``CH_TEST_PASSWORD``;
the ClickHouse database name from ``CH_TEST_DB`` (pytest-django prefixes it with ``test_`` for the
test database).
"""

import os

SECRET_KEY = "clickhouse-server-tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["clickhouse_backend", "tests.clickhouse_server.chapp"]
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    "clickhouse": {
        "ENGINE": "clickhouse_backend.backend",
        "HOST": "127.0.0.1",
        "PORT": int(os.environ.get("CH_TEST_PORT", "9000")),
        "NAME": os.environ.get("CH_TEST_DB", "chapp"),
        "PASSWORD": os.environ.get("CH_TEST_PASSWORD", ""),
        "OPTIONS": {"settings": {"mutations_sync": 1}},
    },
}
DATABASE_ROUTERS = ["tests.clickhouse_server.chapp.routers.ClickHouseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
