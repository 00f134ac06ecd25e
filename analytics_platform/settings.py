"""Settings for every process of the service, read from the environment.

Two configurations come from this one module, chosen by ``ANALYTICS_ENV``:

* ``local`` (the default): the embedded stack that ``make run`` starts on a laptop. SQLite for
  Django's tables, the Tansu broker, the embedded ClickHouse server and a filesystem Celery
  transport, all on loopback, with data under ``var/``.
* ``production``: PostgreSQL, a Kafka cluster, a ClickHouse cluster and Redis for Celery. Every
  address and secret must come from the environment; a missing one stops the process at start
  (``ImproperlyConfigured``) instead of falling back to a development default.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

ANALYTICS_ENV = os.environ.get("ANALYTICS_ENV", "local")
if ANALYTICS_ENV not in {"local", "production"}:
    raise ImproperlyConfigured(f"ANALYTICS_ENV must be 'local' or 'production', not {ANALYTICS_ENV!r}")
PRODUCTION = ANALYTICS_ENV == "production"


def env(name: str, default: str | None = None, *, secret: bool = False, production: bool = False) -> str:
    """Read ``name`` from the environment.

    ``default`` serves the embedded default only when the variable is a secret or marked
    ``production=True`` (an address that must point at real infrastructure): in production those
    are required, so a misconfigured deployment fails at start rather than talking to the wrong
    place or running with a development secret.
    """
    value = os.environ.get(name)
    if value is not None and value != "":
        return value
    if PRODUCTION and (secret or production or default is None):
        raise ImproperlyConfigured(f"{name} must be set when ANALYTICS_ENV=production")
    if default is None:
        raise ImproperlyConfigured(f"{name} must be set")
    return default


def env_bool(name: str, default: bool) -> bool:
    return env(name, "true" if default else "false").strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = env(name, str(default))
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from exc


def env_optional(name: str) -> str:
    """An optional value: empty when unset, in every environment (credentials that have alternatives)."""
    return os.environ.get(name, "")


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


VAR_DIR = Path(env("ANALYTICS_VAR_DIR", str(BASE_DIR / "var")))


def local_secret(name: str) -> str:
    """A per-checkout secret kept in ``var/<name>`` so it survives a restart of the local stack.

    Several processes of the stack start at once on a fresh var/: the secret is written to a temp
    file and linked into place, so exactly one value wins and nobody reads a half-written file.
    Never used in production, where every secret comes from the environment.
    """
    path = VAR_DIR / name
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        tmp = VAR_DIR / f".{name}.{os.getpid()}"
        tmp.write_text(secrets.token_urlsafe(50))
        tmp.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic, and fails if another process won the race
        tmp.unlink()
    return path.read_text().strip()


def env_secret(name: str, *, min_length: int = 32, local_name: str | None = None) -> str:
    """A secret: from the environment, required and at least ``min_length`` long in production;
    locally the environment's value or one generated under ``var/<local_name>`` (``local_secret``)."""
    value = env_optional(name)
    if not PRODUCTION:
        return value or local_secret(local_name or name.lower())
    if not value:
        raise ImproperlyConfigured(f"{name} must be set when ANALYTICS_ENV=production")
    if len(value) < min_length or value.startswith("django-insecure-") or len(set(value)) < 5:
        raise ImproperlyConfigured(f"{name} is too weak: use at least {min_length} random characters")
    return value


# var/secret_key predates env_secret's file naming: kept so existing checkouts keep their sessions.
SECRET_KEY = env_secret("DJANGO_SECRET_KEY", min_length=50, local_name="secret_key")
DEBUG = env_bool("DJANGO_DEBUG", False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DJANGO_DEBUG must be off when ANALYTICS_ENV=production")
ALLOWED_HOSTS = (
    env_list("DJANGO_ALLOWED_HOSTS", "")
    if PRODUCTION
    else env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
)
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set when ANALYTICS_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "rest_framework_simplejwt",
    "drf_spectacular",
    "clickhouse_backend",
    "analytics_platform",
    "accounts",
    "ingest",
    "streams",
    "streams.ledger",
    "metrics",
    "etl",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "analytics_platform.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "analytics_platform.urls"
WSGI_APPLICATION = "analytics_platform.wsgi.application"
ASGI_APPLICATION = "analytics_platform.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Databases -------------------------------------------------------------------------------
# Django's own tables (users, allowlists, metric definitions, export runs): SQLite locally,
# PostgreSQL in production. ClickHouse holds the event data and is reached over its native
# protocol through django-clickhouse-backend; the router sends ClickHouse models there.
DATABASES: dict[str, dict[str, Any]] = {
    "default": dict(
        dj_database_url.parse(
            env("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}", production=True),
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
            conn_health_checks=True,
        )
    ),
}
CLICKHOUSE_SECURE = env_bool("CLICKHOUSE_SECURE", False)
CLICKHOUSE_OPTIONS: dict[str, Any] = {
    "compression": env("CLICKHOUSE_COMPRESSION", "lz4") or False,
    "connect_timeout": env_int("CLICKHOUSE_CONNECT_TIMEOUT", 5),
    "send_receive_timeout": env_int("CLICKHOUSE_SEND_RECEIVE_TIMEOUT", 300),
    "secure": CLICKHOUSE_SECURE,
}
# Cluster mode (analytics_platform/warehouse.py): the name of the ClickHouse cluster (its
# remote_servers entry, whose nodes set the {shard} and {replica} macros). Empty = one server.
# Set, migrations create Replicated tables and Distributed tables ON CLUSTER, and Django's
# migration records live in a Distributed table too, so one `migrate` serves every node.
CLICKHOUSE_CLUSTER = env_optional("CLICKHOUSE_CLUSTER")
if CLICKHOUSE_CLUSTER:
    CLICKHOUSE_OPTIONS["migration_cluster"] = CLICKHOUSE_CLUSTER
    CLICKHOUSE_OPTIONS["distributed_migrations"] = True
if CLICKHOUSE_SECURE:
    CLICKHOUSE_OPTIONS["verify"] = env_bool("CLICKHOUSE_VERIFY", True)
    if env_optional("CLICKHOUSE_CA_CERTS"):
        CLICKHOUSE_OPTIONS["ca_certs"] = env_optional("CLICKHOUSE_CA_CERTS")
DATABASES["clickhouse"] = {
    "ENGINE": "clickhouse_backend.backend",
    "NAME": env("CLICKHOUSE_DATABASE", "analytics"),
    "HOST": env("CLICKHOUSE_HOST", "127.0.0.1", production=True),
    "PORT": env_int("CLICKHOUSE_PORT", 9000),
    "USER": env("CLICKHOUSE_USER", "default"),
    # Production: required. Locally: the environment's, or one generated into var/ that the dev
    # stack also hands to its embedded server (which requires a password), as for SECRET_KEY.
    "PASSWORD": (
        env("CLICKHOUSE_PASSWORD", secret=True)
        if PRODUCTION
        else env_optional("CLICKHOUSE_PASSWORD") or local_secret("clickhouse_password")
    ),
    "OPTIONS": CLICKHOUSE_OPTIONS,
    "TEST": {"fake_transaction": True},
}
DATABASE_ROUTERS = ["analytics_platform.db_routers.ClickHouseRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Kafka -----------------------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", production=True)
# librdkafka security options, passed through unchanged (SSL / SASL_SSL in production).
KAFKA_SECURITY: dict[str, str] = {
    key: value
    for key, value in {
        "security.protocol": env_optional("KAFKA_SECURITY_PROTOCOL"),
        "sasl.mechanism": env_optional("KAFKA_SASL_MECHANISM"),
        "sasl.username": env_optional("KAFKA_SASL_USERNAME"),
        "sasl.password": env_optional("KAFKA_SASL_PASSWORD"),
        "ssl.ca.location": env_optional("KAFKA_SSL_CA_LOCATION"),
        "ssl.certificate.location": env_optional("KAFKA_SSL_CERTIFICATE_LOCATION"),
        "ssl.key.location": env_optional("KAFKA_SSL_KEY_LOCATION"),
    }.items()
    if value
}
KAFKA_TOPIC_PREFIX = env("KAFKA_TOPIC_PREFIX", "")
KAFKA_DEFAULT_PARTITIONS = env_int("KAFKA_DEFAULT_PARTITIONS", 8)
KAFKA_REPLICATION_FACTOR = env_int("KAFKA_REPLICATION_FACTOR", 3 if PRODUCTION else 1)
KAFKA_RETENTION_MS = env_int("KAFKA_RETENTION_MS", 7 * 24 * 3600 * 1000)

# --- Schema registry -------------------------------------------------------------------------
# Any Confluent-compatible registry (Confluent, Karapace, Apicurio's ccompat API, Redpanda); the
# local stack serves analytics_platform/schema_registry on Confluent's port. Credentials and TLS
# go to confluent-kafka's SchemaRegistryClient as they are (analytics_platform/topic_schemas.py).
# Production must authenticate: HTTP Basic credentials, a client certificate, or both.
SCHEMA_REGISTRY_URL = env("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081", production=True)
SCHEMA_REGISTRY_CLIENT: dict[str, Any] = {
    key: value
    for key, value in {
        "url": SCHEMA_REGISTRY_URL,
        "basic.auth.user.info": env_optional("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"),
        "ssl.ca.location": env_optional("SCHEMA_REGISTRY_SSL_CA_LOCATION"),
        "ssl.certificate.location": env_optional("SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"),
        "ssl.key.location": env_optional("SCHEMA_REGISTRY_SSL_KEY_LOCATION"),
        "ssl.key.password": env_optional("SCHEMA_REGISTRY_SSL_KEY_PASSWORD"),
    }.items()
    if value
}
if PRODUCTION and not (
    "basic.auth.user.info" in SCHEMA_REGISTRY_CLIENT or "ssl.certificate.location" in SCHEMA_REGISTRY_CLIENT
):
    raise ImproperlyConfigured(
        "set SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO or SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"
        " when ANALYTICS_ENV=production"
    )
SCHEMA_REGISTRY_TIMEOUT_SECONDS = env_float("SCHEMA_REGISTRY_TIMEOUT_SECONDS", 10)

# --- Celery ----------------------------------------------------------------------------------
# Locally a filesystem transport (nothing to install); Redis in production.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", "filesystem://", production=True)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = (
    {
        "data_folder_in": str(VAR_DIR / "celery" / "queue"),
        "data_folder_out": str(VAR_DIR / "celery" / "queue"),
        "processed_folder": str(VAR_DIR / "celery" / "processed"),
        # kombu's default is ./control, relative to whatever directory the process started in.
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
CELERY_RESULT_BACKEND = env_optional("CELERY_RESULT_BACKEND") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE: dict[str, Any] = {}

# --- Auth, API -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.SessionJWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "analytics_platform.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Video analytics API",
    "DESCRIPTION": "Event ingestion and aggregated metrics for video platforms.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# /demo/ (analytics_platform/demo.py): a test clip played through the player SDK. Off in production:
# anyone who loads it posts events.
DEMO_ENABLED = env_bool("DEMO_ENABLED", not PRODUCTION)

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "admin:login"

# --- Security --------------------------------------------------------------------------------
# TLS terminates at the ingress in production; these make Django trust it and refuse plain HTTP.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
# Probes and the Prometheus scrape talk plain HTTP to the pod (TLS ends at the ingress).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^prometheus/metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0)
# Both bind every host of the parent domain (preload for good, in the browsers' lists): a decision
# for whoever owns the domain, off unless they turn it on (README, "check --deploy").
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", False)

# --- Observability ---------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", "INFO")
# Every process logs JSON lines on stdout; structlog renders both its own and stdlib records.
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "structlog.stdlib.ProcessorFormatter",
            "processors": "ext://analytics_platform.logs.JSON_RENDERER",
            "foreign_pre_chain": "ext://analytics_platform.logs.FOREIGN_PRE_CHAIN",
        },
    },
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "kafka": {"level": "WARNING"},
        "clickhouse_driver": {"level": "WARNING"},
    },
}
PROMETHEUS_EXPORT_MIGRATIONS = False
READINESS_TIMEOUT_SECONDS = env_float("READINESS_TIMEOUT_SECONDS", 2.0)

# --- Ingest ----------------------------------------------------------------------------------
# POST /events (ingest/). Limits from API.md; the Kafka producer is durable (acks=all, idempotent)
# and compressed, and each worker coalesces concurrent requests into v2 batch messages per
# partition: see ingest/producer.py and ingest/coalescer.py.
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 5 * 1024 * 1024)  # decompressed, and on the wire
INGEST_ACK_TIMEOUT_SECONDS = env_float("INGEST_ACK_TIMEOUT_SECONDS", 10)  # then 503 + Retry-After
INGEST_RETRY_AFTER_SECONDS = env_int("INGEST_RETRY_AFTER_SECONDS", 5)
# librdkafka's own wait for more messages: 0, the coalescer already batches per partition (with
# 50 ms the ingest benchmark's p50 latency at low load was about 65 ms instead of about 20 ms, and
# throughput under load did not improve).
INGEST_PRODUCER_LINGER_MS = env_int("INGEST_PRODUCER_LINGER_MS", 0)
INGEST_PRODUCER_BATCH_MESSAGES = env_int("INGEST_PRODUCER_BATCH_MESSAGES", 1000)
INGEST_PRODUCER_COMPRESSION = env("INGEST_PRODUCER_COMPRESSION", "lz4")
INGEST_PRODUCER_QUEUE_MESSAGES = env_int("INGEST_PRODUCER_QUEUE_MESSAGES", 100_000)
INGEST_PRODUCER_EXTRA: dict[str, Any] = {}  # more librdkafka options (tests, tuning)
# How long a partition's pending events wait for more (other requests') before they are produced
# as one message; 0: each request's events are produced at once (still one message per partition).
INGEST_COALESCE_MS = env_float("INGEST_COALESCE_MS", 5)
# A message is produced before it would grow past this size (the broker's default
# message.max.bytes is 1 MB); an event that alone encodes to more is rejected (too_large).
INGEST_MAX_MESSAGE_BYTES = env_int("INGEST_MAX_MESSAGE_BYTES", 900_000)
# A gzip body may be several concatenated members; more than this is refused (400 invalid_gzip):
# no client needs many, and each costs a new inflater.
INGEST_GZIP_MAX_MEMBERS = env_int("INGEST_GZIP_MAX_MEMBERS", 64)
# The accepted event-time window, applied at ingest to the time after the sentAt correction
# (analytics_platform/event_format.py, "bounds of an event"): not older than the raw events'
# retention, which is also the events table's TTL (streams migration 0005 reads this setting when
# it runs, so run `migrate --database clickhouse` again after changing it), and not later than the
# future allowance after the receive time (clocks a little ahead; a larger skew is corrected with
# sentAt). Outside it an event is rejected with timestamp_out_of_range.
EVENTS_RETENTION_DAYS = env_int("EVENTS_RETENTION_DAYS", 90)
INGEST_EVENT_MAX_FUTURE_SECONDS = env_int("INGEST_EVENT_MAX_FUTURE_SECONDS", 600)
for _name, _value, _least in (
    ("INGEST_GZIP_MAX_MEMBERS", INGEST_GZIP_MAX_MEMBERS, 1),
    ("EVENTS_RETENTION_DAYS", EVENTS_RETENTION_DAYS, 1),
    ("INGEST_EVENT_MAX_FUTURE_SECONDS", INGEST_EVENT_MAX_FUTURE_SECONDS, 0),
):
    if _value < _least:
        raise ImproperlyConfigured(f"{_name} must be at least {_least}, got {_value}")
# IP allowlist (rules in the admin; ingest/allowlist.py), per scope: ingest (POST /events), admin
# (/admin/), api (GET /metrics, /auth/*, /dashboards/, /api/docs). Each switched on its own, all on
# by default: an enabled scope with no rule admits nobody. The built-in CIDRs apply to every scope:
# loopback on the embedded default, nothing in production but the rules ops add.
INGEST_ALLOWLIST_ENABLED = env_bool("INGEST_ALLOWLIST_ENABLED", True)
ADMIN_ALLOWLIST_ENABLED = env_bool("ADMIN_ALLOWLIST_ENABLED", True)
API_ALLOWLIST_ENABLED = env_bool("API_ALLOWLIST_ENABLED", True)
INGEST_ALLOWLIST_BUILTIN_CIDRS = env_list("INGEST_ALLOWLIST_BUILTIN_CIDRS", "" if PRODUCTION else "127.0.0.0/8,::1/128")
INGEST_ALLOWLIST_CACHE_SECONDS = env_float("INGEST_ALLOWLIST_CACHE_SECONDS", 5)
# Write keys (admin: Ingest > Write keys) admit browsers instead of the allowlist; looked up once
# per key and process within this time (ingest/write_keys.py).
INGEST_WRITE_KEY_CACHE_SECONDS = env_float("INGEST_WRITE_KEY_CACHE_SECONDS", 5)
# The address sites post to, as the admin's SDK snippet writes it.
INGEST_PUBLIC_URL = env("INGEST_PUBLIC_URL", "http://127.0.0.1:8000")
# Proxies in front of the service that append to X-Forwarded-For (0: use the socket's address).
INGEST_TRUSTED_PROXY_COUNT = env_int("INGEST_TRUSTED_PROXY_COUNT", 0)
# Per client address; 0 disables. The counter cache is shared by all processes.
INGEST_RATE_LIMIT_REQUESTS = env_int("INGEST_RATE_LIMIT_REQUESTS", 1000)
INGEST_RATE_LIMIT_WINDOW_SECONDS = env_int("INGEST_RATE_LIMIT_WINDOW_SECONDS", 1)
# Each process adds its local count to the shared counter at most this often per client (and at
# once when over the limit): one cache round trip per client per interval, not per request.
INGEST_RATE_LIMIT_SYNC_SECONDS = env_float("INGEST_RATE_LIMIT_SYNC_SECONDS", 0.1)
_ratelimit_redis = env(
    "INGEST_RATE_LIMIT_REDIS_URL",
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ("" if not PRODUCTION else None),
)
CACHES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "ingest_ratelimit": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _ratelimit_redis}
        if _ratelimit_redis
        else {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache" / "ingest-ratelimit"),
            "OPTIONS": {"MAX_ENTRIES": 10_000},
        }
    ),
}
MIDDLEWARE += ["ingest.allowlist.AllowlistMiddleware", "accounts.middleware.LoginThrottleMiddleware"]

# --- ETL -------------------------------------------------------------------------------------
# Batch exports of closed days (and optionally hours) from ClickHouse. With BIGQUERY_PROJECT set
# they load into day-partitioned BigQuery tables; without it (the embedded default has no Google
# account) they go to a local Parquet archive under var/exports with the same partition layout.
# Credentials follow Google's Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS
# names a service-account key file, or the pod's workload identity is used when it is unset.
from celery.schedules import crontab  # noqa: E402 -- kept in this block so parallel branches merge cleanly

BIGQUERY_PROJECT = env("BIGQUERY_PROJECT") if PRODUCTION else env_optional("BIGQUERY_PROJECT")
BIGQUERY_DATASET = env("BIGQUERY_DATASET", "analytics")
BIGQUERY_LOCATION = env("BIGQUERY_LOCATION", "US")
# Only for an emulator (bqemulator in tests): a REST endpoint with anonymous credentials.
BIGQUERY_API_ENDPOINT = env_optional("BIGQUERY_API_ENDPOINT")
# How a day is replaced: "decorator" loads with WRITE_TRUNCATE into `table$YYYYMMDD` (atomic and
# free in BigQuery); "merge" loads into a staging table and swaps the day in with one MERGE
# statement (also atomic; the only path emulators support). Hourly exports always merge.
BIGQUERY_REPLACE_MODE = env("BIGQUERY_REPLACE_MODE", "merge" if BIGQUERY_API_ENDPOINT else "decorator")
if BIGQUERY_REPLACE_MODE not in {"decorator", "merge"}:
    raise ImproperlyConfigured("BIGQUERY_REPLACE_MODE must be 'decorator' or 'merge'")
ETL_DESTINATION = "bigquery" if BIGQUERY_PROJECT else "local"
ETL_LOCAL_DIR = Path(env("ETL_LOCAL_DIR", str(VAR_DIR / "exports")))
ETL_MAX_BLOCK_SIZE = env_int("ETL_MAX_BLOCK_SIZE", 65536)  # rows per ClickHouse block = per Parquet row group
ETL_LOCK_TTL_SECONDS = env_int("ETL_LOCK_TTL_SECONDS", 900)  # lease, renewed while an export runs
# manage.py clickhouse_rollups_rebuild holds a lease per rollup, renewed while it runs: a killed
# rebuild blocks the next one until its lease expires, so keep this short.
CLICKHOUSE_REBUILD_LEASE_SECONDS = env_int("CLICKHOUSE_REBUILD_LEASE_SECONDS", 60)
ETL_TASK_MAX_RETRIES = env_int("ETL_TASK_MAX_RETRIES", 6)
ETL_TASK_RETRY_BACKOFF = env_int("ETL_TASK_RETRY_BACKOFF", 30)  # seconds; doubles per retry
ETL_TASK_RETRY_BACKOFF_MAX = env_int("ETL_TASK_RETRY_BACKOFF_MAX", 1800)
ETL_CATCHUP_DAYS = env_int("ETL_CATCHUP_DAYS", 3)  # the daily task also retries missed days this far back
# An export that started within this time after its partition ended is provisional: the next
# nightly run replaces it (views closing after midnight, late retries). 0: the first export is final.
ETL_SETTLE_SECONDS = env_int("ETL_SETTLE_SECONDS", 6 * 3600)
# Client-side retries of BigQuery calls; past them the Celery task retries with backoff instead.
ETL_BIGQUERY_RETRY_DEADLINE = env_float("ETL_BIGQUERY_RETRY_DEADLINE", 120)
ETL_BIGQUERY_UPLOAD_RETRIES = env_int("ETL_BIGQUERY_UPLOAD_RETRIES", 6)
ETL_BIGQUERY_JOB_TIMEOUT = env_float("ETL_BIGQUERY_JOB_TIMEOUT", 3600)
ETL_HOURLY = env_bool("ETL_HOURLY", False)
if PRODUCTION and CELERY_BROKER_URL.startswith("filesystem"):
    # The filesystem transport only reaches workers on the same host: production uses Redis.
    raise ImproperlyConfigured("CELERY_BROKER_URL must name the production broker (redis://...)")
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Redis redelivers an unacknowledged (acks_late) message after visibility_timeout: keep it above
    # the longest export plus the longest retry countdown, or a slow export would be started twice
    # (the partition lease would then make the second one wait, but it is wasted work).
    CELERY_BROKER_TRANSPORT_OPTIONS.setdefault("visibility_timeout", 4 * 3600)
CELERY_BEAT_SCHEDULE["etl-export-closed-days"] = {
    # 00:15 UTC: late events of the closed day have had a quarter of an hour to land.
    "task": "etl.tasks.export_closed_days",
    "schedule": crontab(minute=15, hour=0),
}
if ETL_HOURLY:
    CELERY_BEAT_SCHEDULE["etl-export-previous-hour"] = {
        "task": "etl.tasks.export_closed_hour",
        "schedule": crontab(minute=5),
    }

# --- Metrics ---------------------------------------------------------------------------------
# GET /metrics: bearer tokens from POST /auth/token (accounts/): HS256 signed with a key of their
# own (never SECRET_KEY, so rotating one does not touch the other), access tokens valid 5 minutes,
# refresh tokens 24 hours and spent when used (rotation; a reused one revokes its session). The
# lifetimes are constants, not settings: they are the security contract documented in API.md.
from datetime import timedelta  # noqa: E402 - kept inside this block so the block stays self-contained

JWT_SIGNING_KEY = env_secret("JWT_SIGNING_KEY", min_length=50, local_name="jwt_signing_key")
JWT_ACCESS_TOKEN_LIFETIME = timedelta(minutes=5)
JWT_REFRESH_TOKEN_LIFETIME = timedelta(hours=24)
for _name in ("JWT_ACCESS_TOKEN_SECONDS", "JWT_REFRESH_TOKEN_SECONDS"):
    if env_optional(_name):  # a deployment still setting one would believe it took effect
        raise ImproperlyConfigured(f"{_name} is no longer read: token lifetimes are fixed (README, Security)")
SIMPLE_JWT: dict[str, Any] = {
    "ACCESS_TOKEN_LIFETIME": JWT_ACCESS_TOKEN_LIFETIME,
    "REFRESH_TOKEN_LIFETIME": JWT_REFRESH_TOKEN_LIFETIME,
    "ALGORITHM": "HS256",  # the only one accepted when decoding: "none" and others are refused
    "SIGNING_KEY": JWT_SIGNING_KEY,
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
}
AUTHENTICATION_BACKENDS = ["accounts.backends.ThrottledModelBackend"]
# Login throttle (POST /auth/token and the admin login; accounts/throttle.py): per client address
# every attempt counts, per username every failure, in fixed windows; 0 turns a budget off.
AUTH_THROTTLE_WINDOW_SECONDS = env_int("AUTH_THROTTLE_WINDOW_SECONDS", 300)
AUTH_THROTTLE_IP_ATTEMPTS = env_int("AUTH_THROTTLE_IP_ATTEMPTS", 30)
AUTH_THROTTLE_USERNAME_FAILURES = env_int("AUTH_THROTTLE_USERNAME_FAILURES", 5)
if AUTH_THROTTLE_WINDOW_SECONDS < 1:
    raise ImproperlyConfigured("AUTH_THROTTLE_WINDOW_SECONDS must be at least 1")
# The counters are shared by every process: the ingest rate limit's Redis in production.
CACHES["auth_throttle"] = (
    {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _ratelimit_redis}
    if _ratelimit_redis
    else {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(VAR_DIR / "cache" / "auth-throttle"),
        "OPTIONS": {"MAX_ENTRIES": 10_000},
    }
)
CELERY_BEAT_SCHEDULE["accounts-token-sessions-prune"] = {
    "task": "accounts.tasks.token_sessions_prune",
    "schedule": crontab(minute=45, hour=0),
}
# Identical metric queries within this window are served from Django's cache (locmem by default,
# per process; a shared cache configured in CACHES serves every process). 0 disables it.
METRICS_QUERY_CACHE_SECONDS = env_int("METRICS_QUERY_CACHE_SECONDS", 10)
# Bounds of a metric question (metrics/bounds.py says why each exists); beyond them a 400 naming
# the parameter. Buckets per series by interval: 7 days of minutes, a leap year of hours, the whole
# stored time range (1970-2200) of days.
METRICS_MAX_MINUTE_BUCKETS = env_int("METRICS_MAX_MINUTE_BUCKETS", 7 * 24 * 60)
METRICS_MAX_HOUR_BUCKETS = env_int("METRICS_MAX_HOUR_BUCKETS", 366 * 24)
METRICS_MAX_DAY_BUCKETS = env_int("METRICS_MAX_DAY_BUCKETS", 84_006)
# A grouped answer: limit x buckets points at most (100 groups of 1,000 buckets).
METRICS_MAX_GROUPED_POINTS = env_int("METRICS_MAX_GROUPED_POINTS", 100_000)
# groupBy on a high-cardinality dimension (videoId), unless filtered on it: the range in days.
METRICS_MAX_HIGH_CARDINALITY_RANGE_DAYS = env_int("METRICS_MAX_HIGH_CARDINALITY_RANGE_DAYS", 400)
# Every ClickHouse query of the metrics path runs under these (ClickHouse max_execution_time and
# max_memory_usage); a query stopped by one is a 422 query_too_expensive. The time limit stays
# under gunicorn's 60 s worker timeout, so a request is answered before its worker is killed.
METRICS_QUERY_MAX_EXECUTION_SECONDS = env_int("METRICS_QUERY_MAX_EXECUTION_SECONDS", 30)
METRICS_QUERY_MAX_MEMORY_BYTES = env_int("METRICS_QUERY_MAX_MEMORY_BYTES", 2 * 2**30)
SPECTACULAR_SETTINGS["COMPONENT_SPLIT_REQUEST"] = True
# OpenAPI 3.1: its schemas are JSON Schema 2020-12, what msgspec generates for POST /events.
SPECTACULAR_SETTINGS["OAS_VERSION"] = "3.1.0"
SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "drf_spectacular.hooks.postprocess_schema_enums",
    "ingest.openapi.events_endpoint_document",
]
# --- Streams ---------------------------------------------------------------------------------
# The Quix Streams workers (`manage.py run_stream`): see streams/app.py. Exactly-once into
# ClickHouse does not depend on this guarantee (inserts are idempotent by source offset); it
# governs the derived-event topics, and `exactly-once` needs a broker whose transactions work
# (a real Kafka cluster, not the local Tansu).
STREAMS_CONSUMER_GROUP = env("STREAMS_CONSUMER_GROUP", "streams")
STREAMS_PROCESSING_GUARANTEE = env("STREAMS_PROCESSING_GUARANTEE", "exactly-once" if PRODUCTION else "at-least-once")
if STREAMS_PROCESSING_GUARANTEE not in {"at-least-once", "exactly-once"}:
    raise ImproperlyConfigured("STREAMS_PROCESSING_GUARANTEE must be 'at-least-once' or 'exactly-once'")
STREAMS_COMMIT_INTERVAL = env_float("STREAMS_COMMIT_INTERVAL", 5)
STREAMS_STATE_DIR = Path(env("STREAMS_STATE_DIR", str(VAR_DIR / "streams-state")))
# Tansu's ListOffsets bug crashes Quix when local state is kept across restarts; the state is
# restored from the changelog topics instead. Keep the local state on a real Kafka cluster.
STREAMS_WIPE_STATE_ON_START = env_bool("STREAMS_WIPE_STATE_ON_START", not PRODUCTION)
STREAMS_SESSION_TIMEOUT_MS = env_int("STREAMS_SESSION_TIMEOUT_MS", 45000 if PRODUCTION else 6000)
STREAMS_SINK_RETRY_SECONDS = env_float("STREAMS_SINK_RETRY_SECONDS", 5)
# Rows per INSERT, written while processing goes on. Each INSERT costs ClickHouse a part in the table
# and in every materialized view's target (about 50 ms of embedded-server CPU for events, 80 ms for
# view_summaries, whatever the row count): 50k rows instead of 20k cut the server's CPU by a quarter
# in bench/bench_streams.py.
STREAMS_SINK_CHUNK_ROWS = env_int("STREAMS_SINK_CHUNK_ROWS", 50_000)
# ... or sooner, once its rows are this old and the sink's writer is idle: the checkpoint then waits
# for about this much data, not for a whole checkpoint's worth when the rate is below 10k events/s.
STREAMS_SINK_CHUNK_SECONDS = env_float("STREAMS_SINK_CHUNK_SECONDS", 1.5)
# The most UTC days (hence partitions of any table or rollup written) one INSERT may span: below the
# server's max_partitions_per_insert_block (100), which refuses the whole block otherwise, and above
# the ~92 days of the accepted event-time window, so that accepted traffic is never split.
STREAMS_SINK_PARTITIONS_PER_INSERT = env_int("STREAMS_SINK_PARTITIONS_PER_INSERT", 95)
# lz4 costs the worker ~7 us of CPU per row: worth it across a network, not on loopback.
STREAMS_CLICKHOUSE_COMPRESSION = env("STREAMS_CLICKHOUSE_COMPRESSION", "lz4" if PRODUCTION else "")
STREAMS_IDLE_TIMEOUT_MS = env_int("STREAMS_IDLE_TIMEOUT_MS", 60_000)  # a view closes after 60 s without events
STREAMS_GRACE_MS = env_int("STREAMS_GRACE_MS", 5_000)  # out-of-order allowance before a view closes
# A partition that consumed nothing for this long gets a tick (wall-clock time as a message) when a
# timer is due, so finished/silent views close without further traffic; 0 turns ticks off.
STREAMS_IDLE_TICK_SECONDS = env_float("STREAMS_IDLE_TICK_SECONDS", 5)
STREAMS_DEDUP_WINDOW_MS = env_int("STREAMS_DEDUP_WINDOW_MS", 24 * 3600 * 1000)  # eventId memory per user
# State entries a worker keeps decoded in memory across checkpoints (all its partitions together);
# what one checkpoint changed is always kept until it is written. About 2-3 entries per active user.
STREAMS_STATE_CACHE_ENTRIES = env_int("STREAMS_STATE_CACHE_ENTRIES", 150_000)
# Prometheus exposition of each worker (consumer lag per partition, counters); 0 turns it off.
# Several workers on one host need one port each: `run_stream --metrics-port`.
STREAMS_METRICS_PORT = env_int("STREAMS_METRICS_PORT", 9310)
STREAMS_METRICS_ADDR = env("STREAMS_METRICS_ADDR", "127.0.0.1")
# --- Logs to Elasticsearch -------------------------------------------------------------------
# Off unless ELASTICSEARCH_LOGS_URL is set: then every process also ships its JSON log lines (the
# ones on stdout) to daily indices `<prefix>-YYYY.MM.DD`, from a background thread with a bounded
# queue (analytics_platform/log_shipping.py); `manage.py logs_search` reads them back. Credentials
# come from the environment only: an API key, or a user and password. TLS with an https:// URL,
# verified against the system CAs or ELASTICSEARCH_LOGS_CA_CERTS.
ELASTICSEARCH_LOGS_URL = env_optional("ELASTICSEARCH_LOGS_URL")
ELASTICSEARCH_LOGS_INDEX_PREFIX = env("ELASTICSEARCH_LOGS_INDEX_PREFIX", "analytics-logs")
ELASTICSEARCH_LOGS_API_KEY = env_optional("ELASTICSEARCH_LOGS_API_KEY")
ELASTICSEARCH_LOGS_USERNAME = env_optional("ELASTICSEARCH_LOGS_USERNAME")
ELASTICSEARCH_LOGS_PASSWORD = env_optional("ELASTICSEARCH_LOGS_PASSWORD")
ELASTICSEARCH_LOGS_CA_CERTS = env_optional("ELASTICSEARCH_LOGS_CA_CERTS")
# Lines held in memory per process while Elasticsearch is slow or down; past it new lines are
# dropped (and counted), never waited for. About 1 KB each.
ELASTICSEARCH_LOGS_QUEUE_SIZE = env_int("ELASTICSEARCH_LOGS_QUEUE_SIZE", 10_000)
ELASTICSEARCH_LOGS_BATCH_SIZE = env_int("ELASTICSEARCH_LOGS_BATCH_SIZE", 500)
ELASTICSEARCH_LOGS_FLUSH_SECONDS = env_float("ELASTICSEARCH_LOGS_FLUSH_SECONDS", 1)
ELASTICSEARCH_LOGS_REQUEST_TIMEOUT_SECONDS = env_float("ELASTICSEARCH_LOGS_REQUEST_TIMEOUT_SECONDS", 10)
# How long a process's exit waits for its last lines to be shipped.
ELASTICSEARCH_LOGS_EXIT_TIMEOUT_SECONDS = env_float("ELASTICSEARCH_LOGS_EXIT_TIMEOUT_SECONDS", 2)
if ELASTICSEARCH_LOGS_URL:
    if not ELASTICSEARCH_LOGS_URL.startswith(("http://", "https://")):
        raise ImproperlyConfigured("ELASTICSEARCH_LOGS_URL must be an http:// or https:// URL")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", ELASTICSEARCH_LOGS_INDEX_PREFIX):
        # An Elasticsearch index name: lowercase, none of \/*?"<>|,# or spaces.
        raise ImproperlyConfigured("ELASTICSEARCH_LOGS_INDEX_PREFIX must be lowercase letters, digits, '.', '_', '-'")
    if ELASTICSEARCH_LOGS_API_KEY and ELASTICSEARCH_LOGS_USERNAME:
        raise ImproperlyConfigured("set ELASTICSEARCH_LOGS_API_KEY or ELASTICSEARCH_LOGS_USERNAME/PASSWORD, not both")
    if bool(ELASTICSEARCH_LOGS_USERNAME) != bool(ELASTICSEARCH_LOGS_PASSWORD):
        raise ImproperlyConfigured("ELASTICSEARCH_LOGS_USERNAME and ELASTICSEARCH_LOGS_PASSWORD go together")
    LOGGING["handlers"]["elasticsearch"] = {
        "()": "analytics_platform.log_shipping.handler_from_settings",
        "formatter": "json",  # the stdout line's formatter: the same fields in both places
    }
    LOGGING["root"]["handlers"].append("elasticsearch")
# --- Player errors in Elasticsearch -----------------------------------------------------------
# Off unless ELASTICSEARCH_ERRORS_URL is set: then `manage.py index_errors` (a process of its own,
# started by the devstack and by k8s) indexes the video-error and events-dlq topics into daily
# indices `<prefix>-YYYY.MM.DD`, /dashboards/errors searches them, and a daily beat task deletes
# the indices older than the retention (streams/error_search.py, streams/error_indexer.py).
# Credentials from the environment only, as for the log store (which may be the same cluster).
ELASTICSEARCH_ERRORS_URL = env_optional("ELASTICSEARCH_ERRORS_URL")
ELASTICSEARCH_ERRORS_INDEX_PREFIX = env("ELASTICSEARCH_ERRORS_INDEX_PREFIX", "analytics-player-errors")
ELASTICSEARCH_ERRORS_API_KEY = env_optional("ELASTICSEARCH_ERRORS_API_KEY")
ELASTICSEARCH_ERRORS_USERNAME = env_optional("ELASTICSEARCH_ERRORS_USERNAME")
ELASTICSEARCH_ERRORS_PASSWORD = env_optional("ELASTICSEARCH_ERRORS_PASSWORD")
ELASTICSEARCH_ERRORS_CA_CERTS = env_optional("ELASTICSEARCH_ERRORS_CA_CERTS")
ELASTICSEARCH_ERRORS_REQUEST_TIMEOUT_SECONDS = env_float("ELASTICSEARCH_ERRORS_REQUEST_TIMEOUT_SECONDS", 10)
ELASTICSEARCH_ERRORS_RETENTION_DAYS = env_int("ELASTICSEARCH_ERRORS_RETENTION_DAYS", 30)
ELASTICSEARCH_ERRORS_CONSUMER_GROUP = env("ELASTICSEARCH_ERRORS_CONSUMER_GROUP", "error-indexer")
ELASTICSEARCH_ERRORS_BATCH_SIZE = env_int("ELASTICSEARCH_ERRORS_BATCH_SIZE", 500)
# A batch is retried this many times (backoff doubling from 1 s, capped) before the indexer exits 1
# and its supervisor restarts it from the last commit: about 2 minutes with the defaults, under
# librdkafka's 5-minute max.poll.interval.ms.
ELASTICSEARCH_ERRORS_RETRIES = env_int("ELASTICSEARCH_ERRORS_RETRIES", 8)
ELASTICSEARCH_ERRORS_RETRY_MAX_SECONDS = env_float("ELASTICSEARCH_ERRORS_RETRY_MAX_SECONDS", 30)
if ELASTICSEARCH_ERRORS_URL:
    if not ELASTICSEARCH_ERRORS_URL.startswith(("http://", "https://")):
        raise ImproperlyConfigured("ELASTICSEARCH_ERRORS_URL must be an http:// or https:// URL")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", ELASTICSEARCH_ERRORS_INDEX_PREFIX):
        raise ImproperlyConfigured("ELASTICSEARCH_ERRORS_INDEX_PREFIX must be lowercase letters, digits, '.', '_', '-'")
    if ELASTICSEARCH_ERRORS_API_KEY and ELASTICSEARCH_ERRORS_USERNAME:
        raise ImproperlyConfigured(
            "set ELASTICSEARCH_ERRORS_API_KEY or ELASTICSEARCH_ERRORS_USERNAME/PASSWORD, not both"
        )
    if bool(ELASTICSEARCH_ERRORS_USERNAME) != bool(ELASTICSEARCH_ERRORS_PASSWORD):
        raise ImproperlyConfigured("ELASTICSEARCH_ERRORS_USERNAME and ELASTICSEARCH_ERRORS_PASSWORD go together")
    if ELASTICSEARCH_ERRORS_RETENTION_DAYS < 1 or ELASTICSEARCH_ERRORS_RETRIES < 0:
        raise ImproperlyConfigured(
            "ELASTICSEARCH_ERRORS_RETENTION_DAYS must be >= 1, ELASTICSEARCH_ERRORS_RETRIES >= 0"
        )
    CELERY_BEAT_SCHEDULE["streams-player-error-indices-prune"] = {
        "task": "streams.tasks.player_error_indices_prune",
        "schedule": crontab(minute=30, hour=0),  # 00:30 UTC: a day's index is complete
    }
# The client logs every request at INFO: the shipper's once-a-second bulk would fill stdout.
LOGGING["loggers"]["elastic_transport"] = {"level": "WARNING"}
# --- Static files, API docs ------------------------------------------------------------------
# Served by the web process itself through WhiteNoise (no nginx in front locally or in the pod):
# `collectstatic` (run by the devstack and the image build) writes content-hashed copies with gzip
# and brotli siblings under STATIC_ROOT, served with a one-year cache header. plotly.js comes from
# the installed plotly wheel through metrics.staticfiles.PlotlyFinder, Swagger UI and Redoc from
# drf-spectacular-sidecar: no page loads anything from outside the server.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "whitenoise.middleware.WhiteNoiseMiddleware"
)
INSTALLED_APPS += ["drf_spectacular_sidecar"]
STATIC_ROOT = Path(env("DJANGO_STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "metrics.staticfiles.PlotlyFinder",
]
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
SPECTACULAR_SETTINGS["SWAGGER_UI_DIST"] = "SIDECAR"
SPECTACULAR_SETTINGS["SWAGGER_UI_FAVICON_HREF"] = "SIDECAR"
SPECTACULAR_SETTINGS["REDOC_DIST"] = "SIDECAR"
# --- Tracing (OpenTelemetry; analytics_platform/tracing.py) ----------------------------------
# Off by default: no tracer provider is installed, so every span is the API's no-op and the hot
# paths skip their tracing code altogether. On: spans go over OTLP/HTTP (protobuf) through a
# BatchSpanProcessor, sampled parent-based at OTEL_TRACES_SAMPLER_RATIO. Locally the endpoint
# defaults to the devstack's receiver (``manage.py otlp_receiver``) on loopback.
OTEL_TRACING_ENABLED = env_bool("OTEL_TRACING_ENABLED", False)
# The OpenTelemetry variables' meaning: the traces URL itself, or the collector's base URL.
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = (
    env_optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    or (
        env_optional("OTEL_EXPORTER_OTLP_ENDPOINT").rstrip("/") + "/v1/traces"
        if env_optional("OTEL_EXPORTER_OTLP_ENDPOINT")
        else ""
    )
    or ("" if PRODUCTION else "http://127.0.0.1:4318/v1/traces")
)
# Sent as "Authorization: Bearer <token>" to the endpoint (the local receiver requires it when set).
OTEL_EXPORTER_OTLP_TOKEN = env_optional("OTEL_EXPORTER_OTLP_TOKEN")
OTEL_TRACES_SAMPLER_RATIO = env_float("OTEL_TRACES_SAMPLER_RATIO", 1.0)
# Empty: named after the process (analytics-web, analytics-stream-worker, analytics-celery).
OTEL_SERVICE_NAME = env_optional("OTEL_SERVICE_NAME")
OTLP_RECEIVER_PORT = env_int("OTLP_RECEIVER_PORT", 4318)
OTLP_RECEIVER_STORE = Path(env("OTLP_RECEIVER_STORE", str(VAR_DIR / "traces.sqlite3")))
if not 0.0 <= OTEL_TRACES_SAMPLER_RATIO <= 1.0:
    raise ImproperlyConfigured("OTEL_TRACES_SAMPLER_RATIO must be between 0 and 1")
if OTEL_TRACING_ENABLED and not OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.startswith(("http://", "https://")):
    raise ImproperlyConfigured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http(s) URL when tracing is on")
