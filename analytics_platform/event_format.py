"""The Kafka message format of the ``events`` topic: the contract between ingest and streams.

Ingest produces batch messages (``"v": 2``, below): the events of many users and requests of one
ingest process that fall in one partition. Version 1, one message per (request, userId), is what
ingest produced before and remains valid input (older producers during a rolling upgrade, data
already in the topic): the ingest endpoint grouped a request's accepted events by ``userId`` into
one message keyed by the UTF-8 ``userId`` (so all of a user's events land on one partition, in
order; librdkafka's default partitioner, crc32(key) modulo the partition count), split in order
over several messages with the same key and ``receivedAt`` above ``INGEST_MAX_MESSAGE_BYTES``.

Message value: JSON (UTF-8), ``{"v": 1, "userId": str, "receivedAt": int, "events": [Event, ...]}``
where ``receivedAt`` is the server receive time (epoch ms) of the request and each Event is the
validated API event with camelCase keys as on the wire (API.md), normalised:

* ``eventId``: lower-case canonical UUID string;
* ``timestamp``: event time in epoch milliseconds after the ``sentAt`` clock-skew correction
  (``receivedAt - (sentAt - clientTimestamp)`` when ``sentAt`` was given, else the client's time);
* ``clientTimestamp``: the client's own timestamp as sent, in epoch ms (converted from RFC 3339);
* ``receivedAt``: repeated on each event (epoch ms), so an event is self-contained once unpacked;
* ``userId``: repeated on each event;
* optional fields (``sessionId``, ``videoId``, ``positionMs``, ``bitrateKbps``, ``renditionWidth``,
  ``renditionHeight``, ``playerWidth``, ``playerHeight``, ``errorCode``, ``errorMessage``, ``fatal``,
  ``device``, ``os``, ``browser``, ``country``, ``cdn``, ``player``, ``properties``, ``cmcd``) are
  omitted when absent; ``fatal`` is present (default true) on ``error`` events; ``cmcd`` holds only the
  CTA-5004 keys below that the client sent.

Fields a client sent that API.md does not define are dropped by ingest, never forwarded. Every
event of a message passed validation, and no ``eventId`` repeats within one request; the same
``eventId`` may still arrive again in a later message (a client retry after a 503 or a timeout):
``eventId`` is the deduplication key downstream.

**Batch messages (``"v": 2``, what ingest produces).** ``{"v": 2, "events": [Event, ...]}``: the
events of *several* users and requests of one ingest process that fall in the same partition,
coalesced for up to ``INGEST_COALESCE_MS`` (and up to ``INGEST_MAX_MESSAGE_BYTES``). Each Event is
exactly as above (it carries its own ``userId`` and ``receivedAt``). The message has no key; it is
produced to an explicit partition, ``partition_of(userId, partitions)``: crc32(userId) modulo the
partition count, the partition librdkafka's default partitioner gives a v1 message keyed by that
userId (checked against librdkafka in ``tests/ingest/test_partitioning.py``), so a user's v1 and v2
messages share one partition and stay in order. Every event of a v2 message belongs to that
partition; a user's events appear in the order they were accepted.
Why: the stream worker pays a fixed cost per Kafka message (the Quix loop, state reads and writes)
that dominated its CPU at about 2 events per v1 message (one player request); batches of tens to
hundreds of events amortise it. Consumers must accept both versions (v1 from older producers during
a rolling upgrade).

**Replays** (``"replay": true`` in a v2 envelope, ``REPLAY_HEAD``): events an operator re-sends from
the dead-letter topic (``manage.py dead_letters replay``), which has already made sure none of them
is stored (a ledger of what was replayed, and a lookup in ClickHouse). The processor stores them
even when it remembers their ``eventId``: an event that ClickHouse refused (a sink-stage dead
letter) was remembered as seen before its row failed, so a replay within the dedup window would
otherwise be dropped as a duplicate. Ingest never writes the key (it writes ``BATCH_HEAD``), so a
client cannot set it.

Consumers must accept unknown keys (newer producers may add optional fields) and reject messages
whose ``v`` they do not know (to the dead-letter topic, with the reason).

**Tick messages** (control, not events): ``{"v": 1, "tick": int}``, key ``b"\\x00tick"``, produced
by the stream workers (``streams.app.IdleTicker``) with an explicit partition, to a partition that
has been idle for ``STREAMS_IDLE_TICK_SECONDS`` while one of its timers is due. ``tick`` is the
worker's wall-clock time (epoch ms): "no message reached this partition before this point in the
log, and the clock says ``tick``". A message is a tick only when it has ``tick`` and neither
``userId`` nor ``events``; ingest always writes ``events`` (v1 also ``userId``), so ingest never
produces a tick and no client can forge one. Consumers must never count a tick as an event (no raw
row, no rollup, no dead letter); the stream processor uses it to advance the partition's watermark
to ``tick - grace`` (never backwards) so that views close without further traffic
(``streams/processors/partition.py``). Other consumers of this topic must skip ticks.
"""

from __future__ import annotations

import zlib

MESSAGE_VERSION = 1  # one user's events of one request (keyed by userId); also the version of ticks
BATCH_VERSION = 2  # coalesced events of many users of one partition (explicit partition, no key)

EVENTS_TOPIC = "events"
EVENTS_DLQ_TOPIC = "events-dlq"
VIDEO_WATCHED_TOPIC = "video-watched"
VIDEO_ERROR_TOPIC = "video-error"

PLAYBACK_TYPES: frozenset[str] = frozenset(
    {
        "view_start",
        "playing",
        "pause",
        "seek",
        "rebuffer_start",
        "rebuffer_end",
        "bitrate_change",
        "heartbeat",
        "error",
        "ended",
        "view_end",
    }
)
CUSTOM_TYPE_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"
REPLAY_HEAD = b'{"v":%d,"replay":true,"events":[' % BATCH_VERSION  # a replay's v2 envelope, see above

# --- The bounds of an event: written once, here. ---------------------------------------------
# Ingest decides validity with them (``ingest/schema.py``) and the stream processor decodes with
# the same ones (``streams/processors/decoding.py``), so whatever ingest accepts the processor
# accepts (``tests/streams/test_contract.py`` checks it on generated events). Lengths are in
# characters (code points), as msgspec and ``len(str)`` count them.
USER_ID_MAX_CHARS = 128
SESSION_ID_MAX_CHARS = 128
VIDEO_ID_MAX_CHARS = 256
# API.md leaves these unbounded; the bounds only refuse values no player sends, so that a single
# event cannot carry megabytes in a dimension column.
DIMENSION_MAX_CHARS = 256
ERROR_CODE_MAX_CHARS = 256
ERROR_MESSAGE_MAX_CHARS = 4096
# Integers (positionMs, bitrateKbps, and any number inside properties): exact in a JavaScript number
# and in a ClickHouse Int64 (the worker's JSON encoder refuses integers beyond 64 bits).
INT_MAX = 2**53
# Picture sizes in pixels: ``renditionWidth``/``renditionHeight`` (the decoded picture of the
# rendition playing, ``video.videoWidth``/``videoHeight`` or the ABR level's), ``playerWidth``/
# ``playerHeight`` (the player's displayed size in device pixels: CSS pixels x devicePixelRatio).
# At least 1 (a 0 is a player without metadata yet: the SDK leaves the field out) and at most
# 32,768, twice a 16K picture: a larger value is a bug or a forgery, and would let one event's
# ratio dominate the upscale figures of its view.
PIXELS_MIN = 1
PIXELS_MAX = 32_768
# Every stored time (event time, client time, receive time) lies in [TIMESTAMP_MIN_MS,
# TIMESTAMP_MAX_MS]: 1970 up to 2200-01-01, the DateTime64(3) range ClickHouse stores exactly. A
# client's raw timestamp outside it is refused before any correction (an epoch number that large is
# a unit mistake: microseconds or nanoseconds). The *accepted window* (settings
# ``EVENTS_RETENTION_DAYS``, the raw events' TTL, and ``INGEST_EVENT_MAX_FUTURE_SECONDS``) is much
# narrower and applied at ingest only, to the corrected time: the processor must not depend on the
# wall clock (a replay must give the same rows).
TIMESTAMP_MIN_MS = 0
TIMESTAMP_MAX_MS = 7_258_118_400_000
# ``properties``: a JSON object of at most PROPERTIES_MAX_KEYS keys at its top level; keys at any
# depth 1-PROPERTY_KEY_MAX_CHARS characters; objects and arrays nested at most
# PROPERTIES_MAX_DEPTH levels (the properties object itself is level 1); a string value at most
# PROPERTY_STRING_MAX_CHARS; the whole object at most PROPERTIES_MAX_BYTES once encoded as compact
# JSON (UTF-8). Beyond them: code ``properties_too_deep`` / ``properties_too_large``.
PROPERTIES_MAX_KEYS = 64
PROPERTY_KEY_MAX_CHARS = 128
PROPERTIES_MAX_DEPTH = 8
PROPERTY_STRING_MAX_CHARS = 8192
PROPERTIES_MAX_BYTES = 32_768
# ``cmcd``: Common Media Client Data (CTA-5004, 2020), the player's view of the stream as CMCD
# keys, as an object with the keys' names (the JSON form of CTA-5004's key/value pairs). Types and
# bounds are the specification's: integers are non-negative (kbps or ms; CTA-5004 asks senders to
# round bl and dl to 100 ms and mtp and rtp to 100 kbps, a privacy measure of the sender that is
# not enforced here), strings cid and sid at most 64 characters, tokens from the lists below. A
# key the client sent with a wrong type or outside its bound refuses the event (field
# ``cmcd.<key>``); keys that are not CTA-5004's (custom "-"-prefixed keys included) are dropped.
CMCD_INTEGER_KEYS = ("br", "bl", "d", "dl", "mtp", "rtp", "tb")  # Integer (kbps or ms), >= 0
CMCD_BOOLEAN_KEYS = ("bs", "su")  # buffer starvation, startup
CMCD_ID_MAX_CHARS = 64  # cid, sid: "String, max length 64 characters"
# nor: a relative URL, for which CTA-5004 gives no length: bounded like a dimension.
CMCD_NOR_MAX_CHARS = DIMENSION_MAX_CHARS
CMCD_NRR_PATTERN = r"^[0-9]+-[0-9]*$"  # nrr: "<range-start>-<range-end>", the end optional
CMCD_OBJECT_TYPES = ("m", "a", "v", "av", "i", "c", "tt", "k", "o")  # ot
CMCD_STREAMING_FORMATS = ("d", "h", "s", "o")  # sf: DASH, HLS, Smooth Streaming, other
CMCD_STREAM_TYPES = ("v", "l")  # st: VOD, live
# pr (playback rate) is a non-negative decimal; v (the CMCD version) an integer >= 1.


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user's events: librdkafka's ``consistent_random`` for the key ``userId``."""
    return zlib.crc32(user_id.encode()) % partitions
