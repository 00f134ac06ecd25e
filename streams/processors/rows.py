"""The row layout of the ClickHouse tables the stream worker writes: written once, here.

The processor builds rows as tuples in these column orders (``decoding`` for ``events``,
``views`` for ``view_summaries``), the sink inserts them under these column names, and the hot
paths read fields through the indexes below, derived from the layouts so they cannot drift. The
tables themselves are defined in ``streams/models.py`` and its migrations; ``kafka_topic_id`` is
added by the sink.
"""

from __future__ import annotations

EVENT_COLUMNS: tuple[str, ...] = (
    "event_id",
    "type",
    "ts",
    "user_id",
    "session_id",
    "video_id",
    "client_ts",
    "received_at",
    "position_ms",
    "bitrate_kbps",
    "error_code",
    "error_message",
    "fatal",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "properties",
    "late",
    "kafka_partition",
    "kafka_offset",
)
VIEW_COLUMNS: tuple[str, ...] = (
    "session_id",
    "user_id",
    "video_id",
    "start_ts",
    "end_ts",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "has_view_start",
    "started",
    "startup_time_ms",
    "watch_time_ms",
    "rebuffer_count",
    "rebuffer_duration_ms",
    "error_count",
    "fatal_error_count",
    "start_failure",
    "playback_failure",
    "exit_before_start",
    "max_position_ms",
    "completion",
    "event_count",
    "close_reason",
    "video_watched_id",
    # Seek latency and picture quality (streams 0007, after kafka_topic_id in the table).
    "seek_count",
    "seek_latency_ms",
    "bitrate_time_ms",
    "bitrate_kbps_ms",
    "max_bitrate_kbps",
    "scale_time_ms",
    "upscale_ms",
    "downscale_ms",
    "max_upscale",
    "max_downscale",
    "kafka_partition",
    "kafka_offset",
)

# One row per view per minute in which it was playing or rebuffering (concurrent viewers).
VIEW_MINUTE_COLUMNS: tuple[str, ...] = (
    "minute_ts",
    "session_id",
    "user_id",
    "video_id",
    "device",
    "os",
    "browser",
    "country",
    "cdn",
    "player",
    "kafka_partition",
    "kafka_offset",
)
MINUTE_MS = 60_000


# Indexes into an ``events`` row, for the hot paths.
ID = EVENT_COLUMNS.index("event_id")
TYPE = EVENT_COLUMNS.index("type")
TS = EVENT_COLUMNS.index("ts")
USER = EVENT_COLUMNS.index("user_id")
SESSION = EVENT_COLUMNS.index("session_id")
VIDEO = EVENT_COLUMNS.index("video_id")
CLIENT_TS = EVENT_COLUMNS.index("client_ts")
RECEIVED_AT = EVENT_COLUMNS.index("received_at")
POSITION = EVENT_COLUMNS.index("position_ms")
BITRATE = EVENT_COLUMNS.index("bitrate_kbps")
ERROR_CODE = EVENT_COLUMNS.index("error_code")
ERROR_MESSAGE = EVENT_COLUMNS.index("error_message")
FATAL = EVENT_COLUMNS.index("fatal")
LATE = EVENT_COLUMNS.index("late")
PARTITION = EVENT_COLUMNS.index("kafka_partition")
OFFSET = EVENT_COLUMNS.index("kafka_offset")
# The six dimensions, contiguous in both layouts (a view takes them from its events as a slice).
DIMENSION_NAMES: tuple[str, ...] = ("device", "os", "browser", "country", "cdn", "player")
DIMS = slice(EVENT_COLUMNS.index("device"), EVENT_COLUMNS.index("player") + 1)
assert EVENT_COLUMNS[DIMS] == DIMENSION_NAMES
assert (
    EVENT_COLUMNS[-1] == VIEW_COLUMNS[-1] == VIEW_MINUTE_COLUMNS[-1] == "kafka_offset"
)  # the sink reads a row's offset last
