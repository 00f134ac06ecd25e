"""Project package: settings, URLs, the Celery app and shared infrastructure."""

from analytics_platform.celery import app as celery_app

__all__ = ["celery_app"]
