"""Built-in video quality, scaling, bitrate and seek latency definitions (README "QoE scores").

They read the view-summary columns that ``streams`` 0007 added. Spelled out here, not imported,
like 0002 and 0005. A definition an analyst already created under one of these names is left as
it is (not overwritten, not marked built-in).
"""

from django.db import migrations

VIEW_DIMS = ["videoId", "country", "device", "os", "browser", "cdn", "player"]

BUILTINS = [
    {
        "name": "video_quality_score",
        "description": "Per view with known rendition and player sizes: Mux's 100 * exp(-0.33 * (0.15 * max "
        "upscaling + 0.85 * average upscaling)), upscaling as a fraction weighted by playing time; averaged "
        "over those views.",
        "unit": "score",
        "source": "views",
        "aggregation": "avg",
        "measure": "video_quality_score",
        "conditions": ["scaled"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "upscale_percentage",
        "description": "How much the rendition was enlarged to fill the player, weighted by playing time: "
        "sum over views of upscaling x time / playing time with known sizes, in percent.",
        "unit": "%",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "sum",
        "measure": "upscale_percent_ms",
        "denominator_aggregation": "sum",
        "denominator_measure": "scale_time_ms",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "downscale_percentage",
        "description": "How much the rendition was shrunk to fit the player, weighted by playing time: "
        "sum over views of downscaling x time / playing time with known sizes, in percent.",
        "unit": "%",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "sum",
        "measure": "downscale_percent_ms",
        "denominator_aggregation": "sum",
        "denominator_measure": "scale_time_ms",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "max_upscale_percentage",
        "description": "Per view with known sizes: its largest upscaling, in percent; averaged over those views.",
        "unit": "%",
        "source": "views",
        "aggregation": "avg",
        "measure": "max_upscale_percent",
        "conditions": ["scaled"],
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "average_bitrate_kbps",
        "description": "Bitrate weighted by playing time: sum over views of bitrate x time / playing time with "
        "a known bitrate.",
        "unit": "kbps",
        "source": "views",
        "aggregation": "ratio",
        "numerator_aggregation": "sum",
        "measure": "bitrate_kbps_ms",
        "denominator_aggregation": "sum",
        "denominator_measure": "bitrate_time_ms",
        "dimensions": VIEW_DIMS,
    },
    {
        "name": "seek_latency",
        "description": "Per view with a seek during playback that resumed: the mean time from the seek to the "
        "next playing; averaged over those views.",
        "unit": "ms",
        "source": "views",
        "aggregation": "avg",
        "measure": "seek_latency_per_view_ms",
        "conditions": ["seeked"],
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
    dependencies = [("metrics", "0005_qoe_scores")]

    operations = [migrations.RunPython(create_builtins, delete_builtins)]
