"""Prometheus metrics of the ingest endpoint.

Named ``instrumentation`` because ``metrics`` is the metrics-query app. Counters are incremented
once per request or per Kafka message with per-reason totals (never once per event), so
instrumentation stays off the per-event budget. Works in gunicorn's multi-process mode
(``PROMETHEUS_MULTIPROC_DIR``): the queue depth gauge is summed over live processes.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Gauge, Histogram

events_accepted = Counter("ingest_events_accepted", "Events acknowledged by Kafka and reported accepted (202).")
events_rejected = Counter(
    "ingest_events_rejected",
    "Events refused, by reason: a per-event error code, or a request-level one (broker_unavailable, "
    "ip_not_allowed, rate_limited, too_large, ...) counting every event the request held when known.",
    ["reason"],
)
requests = Counter(
    "ingest_requests",
    "POST /events requests by HTTP status and outcome code (accepted, or the error code: ip_not_allowed, "
    "rate_limited, too_large, broker_unavailable, ...).",
    ["status", "code"],
)
request_latency = Histogram(
    "ingest_request_duration_seconds",
    "POST /events wall time from the view's start to the response, including the wait for Kafka acks.",
    ["status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
producer_queue_depth = Gauge(
    "ingest_producer_queue_messages",
    "Messages waiting in the librdkafka producer queue (produced, not yet acknowledged).",
    multiprocess_mode="livesum",
)
delivery_failures = Counter(
    "ingest_delivery_failures",
    "Kafka messages not acknowledged, by reason (a librdkafka error name, queue_full), and requests that "
    "gave up waiting (ack_timeout) or got no partition count (metadata_unavailable).",
    ["reason"],
)
events_per_message = Histogram(
    "ingest_events_per_message",
    "Events per produced Kafka message (v2 batches coalesced across requests): what the stream workers' "
    "fixed per-message cost is spread over.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)


def rejections_count(codes: Tally[str]) -> None:
    for code, count in codes.items():
        events_rejected.labels(reason=code).inc(count)
