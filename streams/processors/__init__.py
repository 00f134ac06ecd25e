"""The pure stream processor: messages of the ``events`` topic in, rows and derived events out.

No Kafka or ClickHouse code lives here (Snuba-style); ``streams/app.py`` wires it to Quix. By job:

* ``rows``: the column layout of the rows (``events``, ``view_summaries``) and its indexes;
* ``decoding``: messages into validated rows, one bad event at a time (the event contract);
* ``state``: the state store interface and the write-back cache in front of it;
* ``views``: a view's QoE summary, its row and the derived events;
* ``partition``: the partition processor (watermarks, dedup, views, timers, ticks).
"""

from streams.processors.decoding import PoisonError, event_row, message_rows, tick_decode, tick_message
from streams.processors.partition import Output, PartitionProcessor, ProcessorConfig
from streams.processors.rows import EVENT_COLUMNS, VIEW_COLUMNS, VIEW_MINUTE_COLUMNS
from streams.processors.state import StateStore, state_encode
from streams.processors.views import video_error_id, video_watched_id, view_summarize

__all__ = [
    "EVENT_COLUMNS",
    "VIEW_COLUMNS",
    "VIEW_MINUTE_COLUMNS",
    "Output",
    "PartitionProcessor",
    "PoisonError",
    "ProcessorConfig",
    "StateStore",
    "event_row",
    "message_rows",
    "state_encode",
    "tick_decode",
    "tick_message",
    "video_error_id",
    "video_watched_id",
    "view_summarize",
]
