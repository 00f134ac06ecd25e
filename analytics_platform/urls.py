from django.contrib import admin
from django.urls import include, path

from analytics_platform import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Prometheus text lives under /prometheus/metrics so that GET /metrics stays the metrics API.
    path("prometheus/", include("django_prometheus.urls")),
    path("admin/", admin.site.urls),
    path("", include("ingest.urls")),
]
