"""Create the built-in metric definitions of API.md; analysts may edit them in the admin afterwards.

The definitions are spelled out here (not imported) so that later code changes never rewrite what
this migration did.
"""

from django.db import migrations

VIEW_DIMS = ["videoId", "country", "device", "os", "browser", "cdn", "player"]

BUILTINS = [
    {
        "name": "events",
        "description": "Count of accepted events.",
        "unit": "count",
        "source": "events",
        "aggregation": "count",
    },
    {
        "name": "views",
        "description": "Count of distinct sessionId with a view_start (closed views, at the view's start).",
        "unit": "count",
        "source": "views",
        "aggregation": "count",
        "conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "unique_viewers",
        "description": "Count of distinct userId with a view_start (closed views, at the view's start).",
        "unit": "users",
        "source": "views",
        "aggregation": "uniq",
        "measure": "user_id",
        "conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "watch_time_ms",
        "description": "Total time views spent playing or rebuffering (paused and seeking excluded), at the view's start.",
        "unit": "ms",
        "source": "views",
        "aggregation": "sum",
        "measure": "watch_time_ms",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "video_startup_time_ms_p50",
        "description": "Median time from view_start to the first playing; views that never start are excluded.",
        "unit": "ms",
        "source": "views",
        "aggregation": "quantile",
        "measure": "startup_time_ms",
        "quantile": 0.5,
        "conditions": ["started"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "video_startup_time_ms_p95",
        "description": "95th percentile of the time from view_start to the first playing; views that never start are excluded.",
        "unit": "ms",
        "source": "views",
        "aggregation": "quantile",
        "measure": "startup_time_ms",
        "quantile": 0.95,
        "conditions": ["started"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "video_start_failure_rate",
        "description": "Views with a fatal error before the first playing / views.",
        "unit": "ratio",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "count",
        "conditions": ["start_failure"],
        "denominator_aggregation": "count",
        "denominator_conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "exits_before_video_start_rate",
        "description": "Views that ended with no playing and no fatal error / views.",
        "unit": "ratio",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "count",
        "conditions": ["exit_before_start"],
        "denominator_aggregation": "count",
        "denominator_conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "rebuffer_ratio",
        "description": "Total rebuffer duration / watch time.",
        "unit": "ratio",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "sum",
        "measure": "rebuffer_duration_ms",
        "denominator_aggregation": "sum",
        "denominator_measure": "watch_time_ms",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "playback_failure_rate",
        "description": "Views with any fatal error / views.",
        "unit": "ratio",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "count",
        "conditions": ["playback_failure"],
        "denominator_aggregation": "count",
        "denominator_conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "errors",
        "description": "Count of error events.",
        "unit": "count",
        "source": "events",
        "aggregation": "count",
        "event_types": ["error"],
    },
]


def create_builtins(apps, schema_editor):
    MetricDefinition = apps.get_model("metrics", "MetricDefinition")
    for definition in BUILTINS:
        fields = dict(definition)
        name = fields.pop("name")
        MetricDefinition.objects.update_or_create(name=name, defaults={**fields, "builtin": True})


def delete_builtins(apps, schema_editor):
    MetricDefinition = apps.get_model("metrics", "MetricDefinition")
    MetricDefinition.objects.filter(name__in=[d["name"] for d in BUILTINS], builtin=True).delete()


class Migration(migrations.Migration):
    dependencies = [("metrics", "0001_initial")]

    operations = [migrations.RunPython(create_builtins, delete_builtins)]
