from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from accounts.apis import AuthLogoutApi, AuthTokenApi, AuthTokenRefreshApi
from analytics_platform import demo, health, sdk_assets
from analytics_platform.api_docs import RedocView, SwaggerView
from metrics.apis import MetricsQueryApi

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="metrics:overview"), name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Prometheus text lives under /prometheus/metrics so that GET /metrics stays the metrics API.
    path("prometheus/", include("django_prometheus.urls")),
    path("admin/", admin.site.urls),
    path("sdk/<str:name>", sdk_assets.sdk_file, name="sdk-file"),
    path("demo/", demo.demo_page, name="demo"),
    path("demo/clip.wav", demo.demo_clip, name="demo-clip"),
    path("", include("ingest.urls")),
    path("metrics", MetricsQueryApi.as_view(), name="metrics-query"),
    path("auth/token", AuthTokenApi.as_view(), name="auth-token"),
    path("auth/token/refresh", AuthTokenRefreshApi.as_view(), name="auth-token-refresh"),
    path("auth/logout", AuthLogoutApi.as_view(), name="auth-logout"),
    path("dashboards/", include("metrics.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/docs/redoc/", RedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
