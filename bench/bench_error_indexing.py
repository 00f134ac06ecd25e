"""What indexing a player error costs the indexer, and how fast a batch goes into the store.

    PYTHONPATH=. python bench/bench_error_indexing.py [--docs 20000] [--batch 500]

Builds VideoError events as the Avro deserializer returns them, converts them to documents
(``streams.error_search.video_error_document``: CPU-us per event, in this process) and bulk-indexes
them in batches of ``--batch`` (``streams.error_indexer.bulk_index``) into osmem-server started on a
free port (in memory: an upper bound on what a real cluster answers; the figure that matters is
the indexer's own CPU per event, which is the same against Elasticsearch). Then one search of
the kind the page runs (words + filter + range, newest 100).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
import uuid

import django


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "analytics_platform.settings")
    django.setup()
    from analytics_platform.log_store import LogStoreConfig
    from streams import error_search
    from streams.error_indexer import IndexerStats, bulk_index
    from tests.logs.osmem import PlainJsonNode, osmem_start

    now = dt.datetime.now(dt.UTC)
    events = [
        {
            "id": uuid.uuid4(),
            "eventId": uuid.uuid4(),
            "userId": f"user-{i % 5000}",
            "sessionId": str(uuid.uuid4()),
            "videoId": f"video-{i % 400}",
            "timestamp": now - dt.timedelta(seconds=i),
            "errorCode": ("E_MANIFEST", "E_DECODE", "E_NETWORK", "E_DRM")[i % 4],
            "errorMessage": f"request {i} failed: segment {i % 97} returned 403 after 3 attempts",
            "positionMs": i * 10,
            "device": ("smart_tv", "mobile", "desktop")[i % 3],
            "os": "tizen",
            "browser": "webkit",
            "country": ("FR", "DE", "US", "BR")[i % 4],
            "cdn": "cdn-a",
            "player": "p1",
        }
        for i in range(args.docs)
    ]
    started = time.process_time()
    docs = [
        error_search.video_error_document(e, prefix="bench", source=f"video-error/0/{i}") for i, e in enumerate(events)
    ]
    actions = [d.to_dict(include_meta=True) for d in docs if d is not None]
    convert_us = (time.process_time() - started) / len(events) * 1e6
    server = osmem_start()
    try:
        config = error_search.ErrorSearchConfig(
            store=LogStoreConfig(url=server.url, index_prefix="bench", node_class=PlainJsonNode)
        )
        client = error_search.error_search_client_create(config)
        error_search.index_template_install(client=client, prefix="bench")
        stats = IndexerStats()
        wall, cpu = time.perf_counter(), time.process_time()
        ready = [d for d in docs if d is not None]
        for i in range(0, len(ready), args.batch):
            assert bulk_index(client, ready[i : i + args.batch], stats) == []
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        client.indices.refresh(index="bench-*")
        query = error_search.error_query_parse(
            {"q": "segment 403", "country": "FR"}, start=now - dt.timedelta(days=1), end=now + dt.timedelta(minutes=1)
        )
        search_started = time.perf_counter()
        hits = error_search.player_errors_search(client=client, prefix="bench", query=query)
        search_ms = (time.perf_counter() - search_started) * 1000
    finally:
        server.stop()
    print(f"documents: {len(actions)} ({len(events)} events), batch {args.batch}")
    print(f"event -> document -> bulk action: {convert_us:.1f} CPU-us per event")
    print(f"bulk indexing: {stats.indexed / wall:,.0f} docs/s wall, {cpu / stats.indexed * 1e6:.1f} CPU-us per doc")
    print(f"search (words + country + 24 h, newest 100): {search_ms:.1f} ms, total {hits.total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
