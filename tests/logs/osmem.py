"""osmem-server (an in-memory OpenSearch-compatible server from PyPI) as the tests' Elasticsearch.

The elasticsearch 8.x client sends ``Content-Type: application/vnd.elasticsearch+json;
compatible-with=8``, which osmem refuses with 406. ``PlainJsonNode`` sends the plain
``application/json`` / ``application/x-ndjson`` media types instead. It is a test double only:
production code takes the client's default node class, and reaches this one only through the
private ``ELASTICSEARCH_LOGS_NODE_CLASS`` setting (or ``LogStoreConfig.node_class``) that tests set.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import osmem_server
from elastic_transport import HttpHeaders, Urllib3HttpNode
from elastic_transport._node import NodeApiResponse
from elastic_transport.client_utils import DEFAULT, DefaultType
from elasticsearch import Elasticsearch

from analytics_platform.devstack.processes import ManagedProcess, free_port, wait_for_port


class PlainJsonNode(Urllib3HttpNode):
    def perform_request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: HttpHeaders | None = None,
        request_timeout: DefaultType | float | None = DEFAULT,
    ) -> NodeApiResponse:
        if headers is not None:
            headers = headers.copy()
            for name in ("content-type", "accept"):
                value = headers.get(name)
                if value and "compatible-with" in value:
                    headers[name] = "application/x-ndjson" if "x-ndjson" in value else "application/json"
        return super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout)


def osmem_binary() -> Path:
    return Path(osmem_server.__file__).resolve().parent / "bin" / "osmem-server"


@dataclass
class Osmem(ManagedProcess):
    """The project's managed process (``stop``, ``kill``) plus an Elasticsearch client for it."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Elasticsearch:
        return Elasticsearch(self.url, node_class=PlainJsonNode, request_timeout=10)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as response:
            return json.loads(response.read())


def osmem_start(port: int | None = None) -> Osmem:
    """Start osmem-server on ``port`` (a free one by default); it exits with the test process too."""
    port = port or free_port()
    process = subprocess.Popen(
        [str(osmem_binary()), "-addr", f"127.0.0.1:{port}", "-no-stdin-watch", "-parent-pid", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, timeout=20, process=process)
    return Osmem("osmem", process, "127.0.0.1", port)
