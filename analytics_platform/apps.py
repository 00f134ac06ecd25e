from django.apps import AppConfig


class AnalyticsPlatformConfig(AppConfig):
    name = "analytics_platform"
    verbose_name = "Analytics platform"

    def ready(self) -> None:
        from analytics_platform.logs import configure_structlog
        from analytics_platform.tracing import configure_tracing

        configure_structlog()
        configure_tracing()
