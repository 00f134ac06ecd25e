"""The player-error indexer: a consumer of ``video-error`` and ``events-dlq`` that bulk-indexes into Elasticsearch.

``manage.py index_errors``. Why a process of its own, and not a sink inside the stream worker:
the worker's checkpoint commits only once every sink has written, so a slow or dead Elasticsearch
inside it would hold back the ClickHouse rows and the derived events too. Here the topics are the
buffer: while Elasticsearch is out, the worker goes on, messages wait in the broker (for the
topics' retention), and the indexer catches up from its committed offsets. It is the pattern of
Snuba's and Sentry's search consumers: one consumer group per store.

Delivery: offsets are committed after the batch's bulk request succeeded, so a crash re-indexes
at most a batch, and deterministic ids (``streams/error_search.py``) make that an overwrite.

Failures:

* Elasticsearch unreachable, or answering 429/5xx (for the request or for some documents): the
  batch is retried with exponential backoff, at most ``ELASTICSEARCH_ERRORS_RETRIES`` times, while
  the consumer keeps polling (paused) so the group does not evict it; then the process exits 1 and
  its supervisor (the devstack, Kubernetes) starts it again from the last commit. Nothing is lost
  and nothing spins.
* A document Elasticsearch refuses for good (400, a mapping conflict): logged and counted, not
  retried; the rest of the batch is kept.
* A message that does not decode (not Avro of the registered schema, not a dead-letter record):
  logged and skipped, like the worker does with poison messages.
* An event older than the retention: skipped (its index would be deleted by the next prune).
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson
import structlog
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from elasticsearch import Elasticsearch, helpers
from elasticsearch.exceptions import ApiError, TransportError

from analytics_platform import event_format, kafka
from streams import error_search

log = structlog.get_logger(__name__)

#: Per-document statuses worth retrying: the cluster is busy or failing, not refusing the document.
_RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class IndexingUnavailableError(Exception):
    """Elasticsearch stayed unavailable through every retry of a batch."""


@dataclass
class IndexerStats:
    indexed: int = 0
    refused: int = 0  # documents Elasticsearch refused for good
    undecodable: int = 0
    expired: int = 0
    retries: int = 0


@dataclass(frozen=True)
class IndexerConfig:
    search: error_search.ErrorSearchConfig
    group: str
    retries: int = 8
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 30.0
    batch_size: int = 500
    topics: tuple[str, ...] = field(default=())


def indexer_config_get() -> IndexerConfig | None:
    from django.conf import settings

    search = error_search.error_search_config_get()
    if search is None:
        return None
    return IndexerConfig(
        search=search,
        group=settings.ELASTICSEARCH_ERRORS_CONSUMER_GROUP,
        retries=settings.ELASTICSEARCH_ERRORS_RETRIES,
        retry_max_seconds=settings.ELASTICSEARCH_ERRORS_RETRY_MAX_SECONDS,
        batch_size=settings.ELASTICSEARCH_ERRORS_BATCH_SIZE,
        topics=(kafka.topic_name(event_format.VIDEO_ERROR_TOPIC), kafka.topic_name(event_format.EVENTS_DLQ_TOPIC)),
    )


def _source(message: Message) -> str:
    return f"{message.topic()}/{message.partition()}/{message.offset()}"


def _written_at(message: Message) -> dt.datetime:
    _kind, millis = message.timestamp()
    if millis and millis > 0:
        return dt.datetime.fromtimestamp(millis / 1000, dt.UTC)
    return dt.datetime.now(dt.UTC)  # a broker without timestamps: the time it is read


class MessageDecoder:
    """Kafka message -> document, or None (counted) when it is not one of ours."""

    def __init__(self, *, prefix: str, video_error_topic: str, retention_days: int) -> None:
        self.prefix = prefix
        self.video_error_topic = video_error_topic
        self.retention = dt.timedelta(days=retention_days)
        self._avro = AvroDeserializer(kafka.schema_registry_client())

    def __call__(self, message: Message, stats: IndexerStats, now: dt.datetime) -> error_search.PlayerError | None:
        value = message.value() or b""
        try:
            if message.topic() == self.video_error_topic:
                event = self._avro(value, SerializationContext(message.topic(), MessageField.VALUE))
                doc = error_search.video_error_document(event or {}, prefix=self.prefix, source=_source(message))
            else:
                record = orjson.loads(value)
                doc = error_search.dead_letter_document(
                    record, written_at=_written_at(message), prefix=self.prefix, source=_source(message)
                )
        except SchemaRegistryError as exc:
            if exc.http_status_code != 404:  # the registry is down: not this message's fault, let it crash
                raise
            doc = None  # a schema id the registry never gave: a poison message
            log.warning("error_indexer_undecodable", source=_source(message), error=repr(exc)[:300])
        except (SerializationError, orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            doc = None
            log.warning("error_indexer_undecodable", source=_source(message), error=repr(exc)[:300])
        if doc is None:
            stats.undecodable += 1
            return None
        if doc.timestamp < now - self.retention:
            stats.expired += 1
            return None
        return doc


def bulk_index(client: Elasticsearch, docs: list[error_search.PlayerError], stats: IndexerStats) -> list[int]:
    """Index the documents in one bulk request; return the positions of those to retry.

    Raises the client's transport/API errors when the request as a whole failed.
    """
    actions = [doc.to_dict(include_meta=True) for doc in docs]
    retry: list[int] = []
    for position, (ok, item) in enumerate(
        helpers.streaming_bulk(
            client, actions, chunk_size=len(actions) or 1, raise_on_error=False, raise_on_exception=True, max_retries=0
        )
    ):
        if ok:
            stats.indexed += 1
            continue
        result = next(iter(item.values()))
        if result.get("status") in _RETRYABLE_STATUSES:
            retry.append(position)
        else:
            stats.refused += 1
            log.warning(
                "error_indexer_refused", id=result.get("_id"), status=result.get("status"), error=result.get("error")
            )
    return retry


def backoff_delay(attempt: int, *, base: float, cap: float) -> float:
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


def index_with_retries(
    client: Elasticsearch,
    docs: list[error_search.PlayerError],
    stats: IndexerStats,
    *,
    config: IndexerConfig,
    wait: Callable[[float], bool],
) -> None:
    """Bulk-index until every document is indexed or refused; ``IndexingUnavailableError`` after the retries.

    ``wait(seconds)`` sleeps while keeping the consumer alive; it returns False when a stop was asked.
    """
    pending = docs
    for attempt in range(config.retries + 1):
        try:
            positions = bulk_index(client, pending, stats)
            error = f"{len(positions)} documents answered 429/5xx"
        except (TransportError, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status_code not in _RETRYABLE_STATUSES:
                raise
            positions = list(range(len(pending)))
            error = repr(exc)[:300]
        if not positions:
            return
        pending = [pending[p] for p in positions]
        if attempt == config.retries:
            break
        delay = backoff_delay(attempt + 1, base=config.retry_base_seconds, cap=config.retry_max_seconds)
        stats.retries += 1
        log.warning(
            "error_indexer_retry",
            attempt=attempt + 1,
            of=config.retries,
            delay_s=delay,
            documents=len(pending),
            error=error,
        )
        if not wait(delay):
            raise IndexingUnavailableError("stopped while waiting to retry")
    raise IndexingUnavailableError(
        f"Elasticsearch unavailable after {config.retries} retries ({len(pending)} documents)"
    )


class Indexer:
    def __init__(self, config: IndexerConfig) -> None:
        self.config = config
        self.stats = IndexerStats()
        self.stopping = False
        self.client = error_search.error_search_client_create(config.search)
        self.decode = MessageDecoder(
            prefix=config.search.index_prefix,
            video_error_topic=config.topics[0],
            retention_days=config.search.retention_days,
        )
        self.consumer = Consumer(
            kafka.client_config(
                **{
                    "group.id": config.group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 10_000,
                }
            )
        )
        self._template_installed = False

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` with every partition paused, polling so the group keeps the consumer."""
        assignment = self.consumer.assignment()
        self.consumer.pause(assignment)
        try:
            deadline = time.monotonic() + seconds
            while not self.stopping and time.monotonic() < deadline:
                self.consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
        finally:
            self.consumer.resume(self.consumer.assignment())
        return not self.stopping

    def _template(self) -> None:
        """Install the index template before the first bulk; retried as the batches are."""
        if self._template_installed:
            return
        error_search.index_template_install(client=self.client, prefix=self.config.search.index_prefix)
        self._template_installed = True

    def handle(self, messages: Iterable[Message]) -> None:
        now = dt.datetime.now(dt.UTC)
        docs = []
        for message in messages:
            if message.error():
                log.warning("error_indexer_consumer_error", error=str(message.error()))
                continue
            doc = self.decode(message, self.stats, now)
            if doc is not None:
                docs.append(doc)
        if not docs:
            return
        for attempt in range(self.config.retries + 1):
            try:
                self._template()
                break
            except (TransportError, ApiError) as exc:
                if attempt == self.config.retries:
                    raise IndexingUnavailableError(f"index template not installed: {exc!r}") from exc
                delay = backoff_delay(
                    attempt + 1, base=self.config.retry_base_seconds, cap=self.config.retry_max_seconds
                )
                self.stats.retries += 1
                log.warning(
                    "error_indexer_retry",
                    attempt=attempt + 1,
                    of=self.config.retries,
                    delay_s=delay,
                    error=repr(exc)[:300],
                )
                if not self._wait(delay):
                    raise IndexingUnavailableError("stopped while waiting to retry") from exc
        index_with_retries(self.client, docs, self.stats, config=self.config, wait=self._wait)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "stopping", True))
        self.consumer.subscribe(list(self.config.topics))
        log.info("error_indexer_started", topics=list(self.config.topics), index_prefix=self.config.search.index_prefix)
        code = 0
        try:
            while not self.stopping:
                messages = self.consumer.consume(num_messages=self.config.batch_size, timeout=1.0)
                if not messages:
                    continue
                self.handle(messages)
                last: dict[tuple[str, int], int] = {}
                for message in messages:
                    if not message.error():
                        last[message.topic(), message.partition()] = message.offset() + 1
                if last:
                    self.consumer.commit(
                        offsets=[TopicPartition(t, p, o) for (t, p), o in last.items()], asynchronous=False
                    )
                log.info("error_indexer_batch", **vars(self.stats))
        except IndexingUnavailableError as exc:
            if not self.stopping:
                log.error("error_indexer_giving_up", error=str(exc), **vars(self.stats))
                code = 1
        finally:
            self.consumer.close()
        return code
