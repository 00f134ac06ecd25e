"""Built-in QoE scores and rebuffer figures (README "QoE scores"): per-view scores from 0 to 100
averaged over views, in the manner of Mux Data's, and rebuffer count and frequency.

Spelled out here, not imported, like 0002. A definition an analyst already created under one of
these names is left as it is (not overwritten, not marked built-in).
"""

from django.db import migrations

VIEW_DIMS = ["videoId", "country", "device", "os", "browser", "cdn", "player"]

BUILTINS = [
    {
        "name": "playback_success_score",
        "description": "Per view: 100 without a fatal error, 50 for an exit before the video started, 0 for a "
        "playback failure; averaged over views.",
        "unit": "score",
        "source": "views",
        "aggregation": "avg",
        "measure": "playback_success_score",
        "conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "startup_time_score",
        "description": "Per started view: 100 * 8 / (8 + startup time in seconds) (95 at 400 ms, 80 at 2 s, "
        "50 at 8 s); averaged over started views.",
        "unit": "score",
        "source": "views",
        "aggregation": "avg",
        "measure": "startup_time_score",
        "conditions": ["started"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "smoothness_score",
        "description": "Per started view: 100 / ((1 + 10 * rebuffer share of watch time) * (1 + rebuffers per "
        "watched minute / 2)); averaged over started views.",
        "unit": "score",
        "source": "views",
        "aggregation": "avg",
        "measure": "smoothness_score",
        "conditions": ["started"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "viewer_experience_score",
        "description": "Per view: playback success score times the mean of the startup time and smoothness "
        "scores / 100 (a view that never started: its playback success score); averaged over views.",
        "unit": "score",
        "source": "views",
        "aggregation": "avg",
        "measure": "viewer_experience_score",
        "conditions": ["has_view_start"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "rebuffer_count",
        "description": "Count of rebuffers (rebuffer_start) of views, at the view's start.",
        "unit": "count",
        "source": "views",
        "aggregation": "sum",
        "measure": "rebuffer_count",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "rebuffer_frequency",
        "description": "Rebuffers per minute of watch time: total rebuffer count / total watch time in minutes.",
        "unit": "per min",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "sum",
        "measure": "rebuffer_count",
        "denominator_aggregation": "sum",
        "denominator_measure": "watch_time_minutes",
        "dimensions": VIEW_DIMS,
    },
]


def create_builtins(apps, schema_editor):
    MetricDefinition = apps.get_model("metrics", "MetricDefinition")
    for definition in BUILTINS:
        fields = dict(definition)
        name = fields.pop("name")
        if not MetricDefinition.objects.filter(name=name).exists():
            MetricDefinition.objects.create(name=name, **fields, builtin=True)


def delete_builtins(apps, schema_editor):
    MetricDefinition = apps.get_model("metrics", "MetricDefinition")
    MetricDefinition.objects.filter(name__in=[d["name"] for d in BUILTINS], builtin=True).delete()


class Migration(migrations.Migration):
    dependencies = [("metrics", "0004_chained_coarse_rollups")]

    operations = [migrations.RunPython(create_builtins, delete_builtins)]
