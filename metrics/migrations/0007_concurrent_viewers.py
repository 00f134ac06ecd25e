"""Built-in ``concurrent_viewers`` (README "QoE scores"): distinct views playing or rebuffering in
each bucket, from ``view_minutes`` (``streams`` 0008).

Spelled out here, not imported, like 0002. A definition an analyst already created under this
name is left as it is (not overwritten, not marked built-in).
"""

from django.db import migrations

BUILTINS = [
    {
        "name": "concurrent_viewers",
        "description": "Views that spent some of the bucket playing or rebuffering (paused and stopped views "
        "excluded): per minute, the concurrent viewers; per hour or day, the views that played during it.",
        "unit": "viewers",
        "source": "view_minutes",
        "aggregation": "uniq",
        "measure": "session_id",
        "dimensions": ["videoId", "country", "device", "os", "browser", "cdn", "player"],
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
    dependencies = [("metrics", "0006_quality_and_seek_latency")]

    operations = [migrations.RunPython(create_builtins, delete_builtins)]
