"""Routes of the metrics capability (the API at /metrics is wired in analytics_platform/urls.py)."""

from django.urls import path

from metrics import views

app_name = "metrics"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("videos/<path:video_id>", views.video, name="video"),
    path("live", views.live, name="live"),
    path("errors", views.errors, name="errors"),
]
