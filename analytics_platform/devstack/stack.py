"""What ``make run`` starts, in order, on the embedded default.

Infrastructure first (broker, ClickHouse server), then the one-off bootstrap (topics, migrations,
admin user), then the long-running application processes. Each later capability adds its
processes to ``application_processes``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from django.conf import settings


def manage(*args: str) -> list[str]:
    return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *args]


def application_processes(*, port: int) -> list[tuple[str, list[str]]]:
    bin_dir = Path(sys.executable).parent
    return [
        (
            "web",
            [str(bin_dir / "gunicorn"), "-c", "python:analytics_platform.gunicorn_conf", f"--bind=127.0.0.1:{port}"],
        ),
        # One stream worker; start more `run_stream` processes (same group) to split the partitions.
        ("streams", manage("run_stream")),
        (
            "worker",
            [
                str(bin_dir / "celery"),
                "-A",
                "analytics_platform",
                "--quiet",  # no ASCII-art banner in the JSON log stream
                "worker",
                "-l",
                "INFO",
                "-c",
                "2",
                "--pool",
                "threads",
            ],
        ),
        (
            "beat",
            [
                str(bin_dir / "celery"),
                "-A",
                "analytics_platform",
                "--quiet",
                "beat",
                "-l",
                "INFO",
                "-s",
                str(settings.CELERY_BEAT_SCHEDULE_FILENAME),
            ],
        ),
    ]


def runtime_dirs_prepare() -> dict[str, str]:
    """Create var/ folders; return the environment every child process shares."""
    var = Path(settings.VAR_DIR)
    for sub in ("clickhouse", "celery/queue", "celery/processed", "celery/control", "logs"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    # Prometheus multi-process files describe live processes only: start from an empty folder.
    prom = var / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)
    prom.mkdir(parents=True)
    return {"PROMETHEUS_MULTIPROC_DIR": str(prom), "ANALYTICS_VAR_DIR": str(var)}


def env_port(default: int = 8000) -> int:
    return int(os.environ.get("PORT", default))
