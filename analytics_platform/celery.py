"""The Celery app shared by the worker, beat and the web process (which only enqueues)."""

import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")

app = Celery("analytics_platform")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_process_shutdown.connect
def _log_shipping_close(**_: Any) -> None:
    # Prefork pool children end with os._exit, which skips atexit: ship their last log lines first.
    from analytics_platform.log_shipping import handlers_close

    handlers_close()
