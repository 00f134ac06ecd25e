from clickhouse_backend import models
from django.utils import timezone


class VideoView(models.ClickhouseModel):
    """One playback session of a video, shaped like the analytics service's raw events."""

    video_id = models.UInt32Field()
    country = models.StringField(low_cardinality=True, default="")
    watched_seconds = models.UInt32Field(default=0)
    completed = models.BoolField(default=False)
    started_at = models.DateTime64Field(default=timezone.now)

    class Meta:
        app_label = "chapp"
        engine = models.MergeTree(order_by=("video_id", "started_at"), partition_by=models.toYYYYMM("started_at"))
