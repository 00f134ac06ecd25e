"""Settings wiring and the small pure parts of log shipping (no server needed)."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from analytics_platform.log_shipping import process_name
from analytics_platform.log_store import LogStoreConfig, duration_parse, log_index_name


@pytest.fixture
def reload_settings(monkeypatch: pytest.MonkeyPatch):
    import analytics_platform.settings as settings_module

    for name in ("ELASTICSEARCH_LOGS_URL", "ELASTICSEARCH_LOGS_API_KEY", "ELASTICSEARCH_LOGS_USERNAME"):
        monkeypatch.delenv(name, raising=False)

    def reload(**env: str):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return importlib.reload(settings_module)

    yield reload
    monkeypatch.undo()
    importlib.reload(settings_module)


def test_the_handler_is_configured_only_when_the_url_is_set(reload_settings) -> None:
    off = reload_settings()
    assert "elasticsearch" not in off.LOGGING["handlers"]
    assert off.LOGGING["root"]["handlers"] == ["stdout"]
    on = reload_settings(ELASTICSEARCH_LOGS_URL="https://logs.example.com:9243", ELASTICSEARCH_LOGS_API_KEY="k")
    assert on.LOGGING["root"]["handlers"] == ["stdout", "elasticsearch"]
    handler = on.LOGGING["handlers"]["elasticsearch"]
    assert handler["formatter"] == on.LOGGING["handlers"]["stdout"]["formatter"]  # the same rendering
    assert "k" not in str(handler)  # the key stays in its setting, out of the logging config


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ELASTICSEARCH_LOGS_URL": "logs.example.com:9200"}, "http:// or https://"),
        ({"ELASTICSEARCH_LOGS_URL": "http://es:9200", "ELASTICSEARCH_LOGS_INDEX_PREFIX": "Logs"}, "lowercase"),
        (
            {
                "ELASTICSEARCH_LOGS_URL": "http://es:9200",
                "ELASTICSEARCH_LOGS_API_KEY": "k",
                "ELASTICSEARCH_LOGS_USERNAME": "u",
                "ELASTICSEARCH_LOGS_PASSWORD": "p",
            },
            "not both",
        ),
        ({"ELASTICSEARCH_LOGS_URL": "http://es:9200", "ELASTICSEARCH_LOGS_USERNAME": "u"}, "go together"),
    ],
)
def test_a_configuration_that_cannot_work_stops_the_process(reload_settings, env, message) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        reload_settings(**env)


def test_daily_index_of_the_line_timestamp() -> None:
    assert log_index_name("analytics-logs", "2026-11-27T23:59:59.999999Z") == "analytics-logs-2026.11.27"
    now = dt.datetime(2026, 11, 28, 0, 0, 1, tzinfo=dt.UTC)
    assert log_index_name("analytics-logs", None, now=now) == "analytics-logs-2026.11.28"


def test_durations() -> None:
    assert duration_parse("15m") == dt.timedelta(minutes=15)
    assert duration_parse("2h") == dt.timedelta(hours=2)
    assert duration_parse("7d") == dt.timedelta(days=7)
    with pytest.raises(ValueError, match="duration"):
        duration_parse("15 minutes")


def test_process_names() -> None:
    assert process_name(["/app/manage.py", "run_stream", "events"]) == "manage.py run_stream"
    assert process_name(["/venv/bin/celery", "-A", "analytics_platform", "worker", "-l", "INFO"]) == "celery worker"
    assert process_name(["/venv/bin/gunicorn", "-c", "python:analytics_platform.gunicorn_conf"]) == "gunicorn"


def test_messages_show_the_url_without_credentials() -> None:
    config = LogStoreConfig(url="https://shipper:s3cret@logs.example.com:9243/base")
    assert config.display_url == "https://logs.example.com:9243/base"


def test_secrets_stay_out_of_the_configuration_repr() -> None:
    config = LogStoreConfig(url="https://logs.example.com", api_key="key-value", username="u", password="pw-value")
    assert "key-value" not in repr(config)
    assert "pw-value" not in repr(config)
