"""Player errors in Elasticsearch: the document, its daily indices and their template, search, retention.

Two kinds of hit share one document type (``PlayerError``), so one search box finds both:

* ``video_error``: a ``VideoError`` derived event (``streams/schemas/video_error.avsc``), the
  player's own ``errorCode`` and ``errorMessage``, at the event's time;
* ``dead_letter``: a record of the ``events-dlq`` topic (``streams/dead_letters.py``), its
  ``reason`` as the code and its ``detail`` as the message, at the time the dead letter was
  written (a dead letter's payload may have no usable time at all: that is often why it is one).

Ids are deterministic, so indexing the same event twice (a redelivery, a replay of the topics)
overwrites one document instead of adding a second: a VideoError's own ``id`` (uuid5 of its
eventId), a dead letter's uuid5 of where its message came from and what it names. The index of a
document is the UTC day of its time (``<prefix>-YYYY.MM.DD``), also deterministic, so both copies
land in the same index. Retention is the deletion of whole indices older than
``ELASTICSEARCH_ERRORS_RETENTION_DAYS`` (``player_error_indices_prune``, a Celery beat task daily):
no delete-by-query, which on Elasticsearch rewrites segments and costs far more than dropping an index.

The indexing process is ``streams/error_indexer.py``; the page that searches is ``/dashboards/errors``.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from elasticsearch import Elasticsearch
from elasticsearch_dsl import ComposableIndexTemplate, Date, Document, Keyword, Long, Mapping, Search, Text

from analytics_platform.log_store import TEMPLATE_PRIORITY, LogStoreConfig, log_store_client_create

VIDEO_ERROR = "video_error"
DEAD_LETTER = "dead_letter"
KINDS = (VIDEO_ERROR, DEAD_LETTER)
# uuid5 namespace of dead-letter document ids (VideoError ids are the event's own).
_DEAD_LETTER_NAMESPACE = uuid.UUID("5b0c1f52-3f0e-4d7c-9a51-2f4be0d3c0a1")
_INDEX_DAY = re.compile(r"-(\d{4})\.(\d{2})\.(\d{2})$")
MESSAGE_MAX_CHARS = 4000  # errorMessage has no bound in the contract; a whole stack trace is enough
SEARCH_TEXT_MAX_CHARS = 200
FILTER_MAX_CHARS = 200
SEARCH_LIMIT_MAX = 500

#: The filters of the search, the page's parameter -> the document's keyword field.
FILTER_FIELDS = {"code": "code", "video": "video_id", "country": "country", "device": "device", "kind": "kind"}


class PlayerError(Document):
    """One player error (or dead letter), as searched. Keyword fields are exact-match filters."""

    kind = Keyword()
    timestamp = Date()
    # Text for search by words; the keyword copy for sorting and exact lookups of short messages.
    message = Text(fields={"keyword": Keyword(ignore_above=512)})
    code = Keyword()
    event_id = Keyword()
    user_id = Keyword()
    session_id = Keyword()
    video_id = Keyword()
    device = Keyword()
    os = Keyword()
    browser = Keyword()
    country = Keyword()
    cdn = Keyword()
    player = Keyword()
    position_ms = Long()
    # Dead letters only: which field broke the contract, and at which stage of the worker.
    field = Keyword()
    stage = Keyword()
    # Where the indexed Kafka record was: ``topic/partition/offset``, to find it again.
    source = Keyword()


@dataclass(frozen=True)
class ErrorSearchConfig:
    """Where the player errors live: the connection (shared with the log store's) and the indices."""

    store: LogStoreConfig
    retention_days: int = 30

    @property
    def index_prefix(self) -> str:
        return self.store.index_prefix


def error_search_config_get() -> ErrorSearchConfig | None:
    """From Django settings; None when ``ELASTICSEARCH_ERRORS_URL`` is not set (search is off)."""
    from django.conf import settings

    if not settings.ELASTICSEARCH_ERRORS_URL:
        return None
    store = LogStoreConfig(
        url=settings.ELASTICSEARCH_ERRORS_URL,
        index_prefix=settings.ELASTICSEARCH_ERRORS_INDEX_PREFIX,
        api_key=settings.ELASTICSEARCH_ERRORS_API_KEY,
        username=settings.ELASTICSEARCH_ERRORS_USERNAME,
        password=settings.ELASTICSEARCH_ERRORS_PASSWORD,
        ca_certs=settings.ELASTICSEARCH_ERRORS_CA_CERTS,
        request_timeout=settings.ELASTICSEARCH_ERRORS_REQUEST_TIMEOUT_SECONDS,
        # Private, never from the environment: only the tests' in-memory server needs it.
        node_class=getattr(settings, "ELASTICSEARCH_ERRORS_NODE_CLASS", None),
    )
    return ErrorSearchConfig(store=store, retention_days=settings.ELASTICSEARCH_ERRORS_RETENTION_DAYS)


def error_search_client_create(config: ErrorSearchConfig) -> Elasticsearch:
    return log_store_client_create(config.store)


def index_pattern(prefix: str) -> str:
    return f"{prefix}-*"


def index_name(prefix: str, moment: dt.datetime) -> str:
    return f"{prefix}-{moment.astimezone(dt.UTC):%Y.%m.%d}"


def player_error_mapping() -> Mapping:
    """The document's fields, ``dynamic: false``: a field outside them (a future schema's) is kept in
    ``_source`` but never indexed, so it cannot change the mapping of today's index under our feet.
    Set on the template's own mapping: the template's clone of a Document's drops its meta
    (elasticsearch-dsl 8.18, see analytics_platform/log_store.py).
    """
    mapping = PlayerError._doc_type.mapping._clone()
    mapping.meta("dynamic", False)
    return mapping


def index_template(prefix: str) -> ComposableIndexTemplate:
    template = ComposableIndexTemplate(prefix, index_pattern(prefix), priority=TEMPLATE_PRIORITY)
    template.mapping(player_error_mapping())
    return template


def index_template_install(*, client: Elasticsearch, prefix: str) -> None:
    """PUT the composable template of ``<prefix>-*`` (idempotent); indices created after it use it."""
    index_template(prefix).save(using=client)


def _text(value: Any, limit: int = FILTER_MAX_CHARS) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _millis(value: Any) -> dt.datetime | None:
    """An Avro timestamp-millis (a datetime once decoded) or epoch milliseconds -> UTC datetime."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value / 1000, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def video_error_document(event: dict[str, Any], *, prefix: str, source: str) -> PlayerError | None:
    """A decoded VideoError -> its document, or None when it has no id or time (not one of ours)."""
    moment = _millis(event.get("timestamp"))
    doc_id = event.get("id")
    if moment is None or not doc_id:
        return None
    position = event.get("positionMs")
    return PlayerError(
        meta={"id": str(doc_id), "index": index_name(prefix, moment)},
        kind=VIDEO_ERROR,
        timestamp=moment,
        message=_text(event.get("errorMessage"), MESSAGE_MAX_CHARS),
        code=_text(event.get("errorCode")),
        event_id=str(event.get("eventId") or ""),
        user_id=_text(event.get("userId")),
        session_id=_text(event.get("sessionId")),
        video_id=_text(event.get("videoId")),
        device=_text(event.get("device")),
        os=_text(event.get("os")),
        browser=_text(event.get("browser")),
        country=_text(event.get("country")),
        cdn=_text(event.get("cdn")),
        player=_text(event.get("player")),
        position_ms=position if isinstance(position, int) and not isinstance(position, bool) else None,
        source=source,
    )


def dead_letter_id(record: dict[str, Any]) -> str:
    """Where the dead-lettered message came from and which event of it: the same for a re-emitted copy."""
    parts = (
        record.get("topic"),
        record.get("partition"),
        record.get("offset"),
        record.get("eventId"),
        record.get("reason"),
    )
    return str(uuid.uuid5(_DEAD_LETTER_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def dead_letter_document(
    record: dict[str, Any], *, written_at: dt.datetime, prefix: str, source: str
) -> PlayerError | None:
    """A dead-letter record -> its document; None when it is not one (``type`` is not DeadLetter)."""
    from streams import dead_letters

    if not isinstance(record, dict) or record.get("type") != dead_letters.RECORD_TYPE:
        return None
    return PlayerError(
        meta={"id": dead_letter_id(record), "index": index_name(prefix, written_at)},
        kind=DEAD_LETTER,
        timestamp=written_at,
        message=_text(record.get("detail"), MESSAGE_MAX_CHARS),
        code=_text(record.get("reason")),
        event_id=_text(record.get("eventId")),
        user_id=_text(record.get("userId")),
        field=_text(record.get("field")),
        stage=_text(record.get("stage")),
        source=source,
    )


@dataclass(frozen=True)
class ErrorQuery:
    """What the page asks: words of the message, exact filters, a time range, how many hits."""

    start: dt.datetime
    end: dt.datetime
    text: str = ""
    filters: dict[str, str] = field(default_factory=dict)  # FILTER_FIELDS keys
    limit: int = 100


class ErrorQueryError(ValueError):
    pass


def error_query_parse(params: dict[str, str], *, start: dt.datetime, end: dt.datetime, limit: int = 100) -> ErrorQuery:
    """The page's parameters, bounded: unknown kinds and oversized values are refused, not truncated."""
    text = (params.get("q") or "").strip()
    if len(text) > SEARCH_TEXT_MAX_CHARS:
        raise ErrorQueryError(f"the search text is limited to {SEARCH_TEXT_MAX_CHARS} characters")
    filters = {}
    for name in FILTER_FIELDS:
        value = (params.get(name) or "").strip()
        if not value:
            continue
        if len(value) > FILTER_MAX_CHARS:
            raise ErrorQueryError(f"{name} is limited to {FILTER_MAX_CHARS} characters")
        if name == "kind" and value not in KINDS:
            raise ErrorQueryError(f"kind must be one of {', '.join(KINDS)}")
        filters[name] = value
    if not 1 <= limit <= SEARCH_LIMIT_MAX:
        raise ErrorQueryError(f"limit must be between 1 and {SEARCH_LIMIT_MAX}")
    return ErrorQuery(start=start, end=end, text=text, filters=filters, limit=limit)


def error_search_build(query: ErrorQuery, *, prefix: str, client: Elasticsearch | None = None) -> Search:
    """The search: ``match`` on the message (words, all of them; never query-string syntax, so a
    user's ``*`` or ``OR`` are plain words), ``term`` filters, the range half-open like the metrics'."""
    search = Search(using=client, index=index_pattern(prefix))
    if query.text:
        search = search.query("match", message={"query": query.text, "operator": "and"})
    for name, value in sorted(query.filters.items()):
        search = search.filter("term", **{FILTER_FIELDS[name]: value})
    search = search.filter(
        "range",
        timestamp={"gte": query.start.astimezone(dt.UTC).isoformat(), "lt": query.end.astimezone(dt.UTC).isoformat()},
    )
    return search.sort({"timestamp": {"order": "desc"}}).extra(size=query.limit, track_total_hits=True)


@dataclass(frozen=True)
class ErrorHits:
    total: int
    hits: list[dict[str, Any]]


def player_errors_search(*, client: Elasticsearch, prefix: str, query: ErrorQuery) -> ErrorHits:
    """Newest first; each hit its ``_source`` plus ``id``. Raises the client's errors when the store is down."""
    response = error_search_build(query, prefix=prefix, client=client).params(ignore_unavailable=True).execute()
    hits = [{"id": hit.meta.id, **hit.to_dict()} for hit in response.hits]
    total = response.hits.total
    return ErrorHits(total=int(getattr(total, "value", len(hits))), hits=hits)


def player_error_indices_prune(
    *, client: Elasticsearch, prefix: str, retention_days: int, now: dt.datetime | None = None
) -> list[str]:
    """Delete the daily indices whose whole day is older than the retention; return their names.

    Only names ``<prefix>-YYYY.MM.DD`` are considered, so another index under the same prefix
    (an alias, a reindex target) is never touched.
    """
    today = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()
    oldest_kept = today - dt.timedelta(days=retention_days)
    names = sorted(client.indices.get(index=index_pattern(prefix), expand_wildcards="open,closed").keys())
    expired = []
    for name in names:
        match = _INDEX_DAY.search(name)
        if not match or name[: match.start()] != prefix:
            continue
        try:
            day = dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        except ValueError:
            continue
        if day < oldest_kept:
            expired.append(name)
    for name in expired:
        client.indices.delete(index=name)
    return expired


def player_errors_find(*, query: ErrorQuery) -> tuple[ErrorHits | None, str]:
    """The page's search with the configured store: (hits, "") or (None, why there are none).

    A store that is off, down or refusing is a message on the page, never a 500: the ClickHouse
    counts beside the hits do not depend on it.
    """
    from elasticsearch.exceptions import ApiError, TransportError

    config = error_search_config_get()
    if config is None:
        return None, "Player-error search is off: set ELASTICSEARCH_ERRORS_URL (see the README)."
    client = error_search_client_create(config)
    try:
        return player_errors_search(client=client, prefix=config.index_prefix, query=query), ""
    except (TransportError, ApiError) as exc:
        return None, f"Player-error search is unavailable ({type(exc).__name__} from {config.store.display_url})."
    finally:
        client.close()
