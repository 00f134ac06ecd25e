"""The registry's port under hostile input: no credentials, wrong ones, huge, deep, malformed, odd names."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from analytics_platform.schema_registry.testing import RegistryProcess, start_registry_process

USER_INFO = "analytics:a-long-registry-password"
SCHEMA = json.dumps({"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]})


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    process = start_registry_process(data_dir=tmp_path / "registry", user_info=USER_INFO)
    yield process
    process.stop()


def request(
    registry: RegistryProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    auth: str | None = USER_INFO,
    **headers: str,
) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(registry.host, registry.port, timeout=10)
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        connection.close()


def test_every_route_needs_the_credentials(registry: RegistryProcess) -> None:
    for method, path in (
        ("GET", "/subjects"),
        ("GET", "/config"),
        ("POST", "/subjects/x-value/versions"),
        ("GET", "/"),
    ):
        status, body = request(registry, method, path, b"{}", auth=None)
        assert (status, body) == (401, {"error_code": 401, "message": "Unauthorized"}), path
    assert request(registry, "GET", "/subjects", auth="analytics:wrong")[0] == 401
    assert request(registry, "GET", "/subjects", auth="analytics")[0] == 401
    assert request(registry, "GET", "/subjects", Authorization="Bearer x", auth=None)[0] == 401
    assert request(registry, "GET", "/subjects", Authorization="Basic %%%", auth=None)[0] == 401
    assert request(registry, "GET", "/subjects") == (200, [])
    # confluent-kafka's client with basic.auth.user.info, as production configures it.
    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": USER_INFO})
    assert client.register_schema("x-value", Schema(SCHEMA, "AVRO")) == 1
    with pytest.raises(SchemaRegistryError) as caught:
        SchemaRegistryClient({"url": registry.url, "max.retries": 0}).get_subjects()
    assert caught.value.error_code == 401


def test_no_unauthenticated_registry_beyond_loopback(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code 2"):
        start_registry_process(data_dir=tmp_path / "open", host="0.0.0.0", timeout=15)


def test_huge_deep_and_malformed_bodies_are_refused_cleanly(registry: RegistryProcess) -> None:
    path = "/subjects/x-value/versions"
    huge = json.dumps({"schema": json.dumps({"type": "record", "name": "R", "doc": "x" * (2 << 20), "fields": []})})
    assert request(registry, "POST", path, huge.encode())[0] == 413
    assert request(registry, "POST", path, b"{not json")[1]["error_code"] == 400
    assert request(registry, "POST", path, b"[1, 2]")[1]["error_code"] == 422
    assert request(registry, "POST", path, json.dumps({"schema": 5}).encode())[1]["error_code"] == 42201
    deep_body = b"[" * 200_000 + b"]" * 200_000
    assert request(registry, "POST", path, deep_body)[0] in (400, 413)
    for depth in (900, 5_000):  # within the JSON parser's reach but not Avro's; beyond the JSON parser's
        deep_schema = '{"type":"array","items":' * depth + '"int"' + "}" * depth
        status, body = request(registry, "POST", path, json.dumps({"schema": deep_schema}).encode())
        assert (status, body["error_code"]) == (422, 42201), depth
    assert (
        request(registry, "POST", path, json.dumps({"schema": SCHEMA, "references": [{"name": "x"}]}).encode())[1][
            "error_code"
        ]
        == 42201
    )
    status, body = request(
        registry, "POST", "/subjects/" + "s" * 300 + "/versions", json.dumps({"schema": SCHEMA}).encode()
    )
    assert status == 422
    assert request(registry, "GET", "/subjects/%00bad/versions")[0] == 422
    assert request(registry, "GET", "/schemas/ids/not-a-number")[1]["error_code"] == 40403
    assert request(registry, "GET", "/nowhere")[1] == {"error_code": 404, "message": "HTTP 404 Not Found"}
    assert request(registry, "PATCH", "/subjects")[0] in (405, 501)
    # Still serving after all of it.
    assert request(registry, "POST", path, json.dumps({"schema": SCHEMA}).encode()) == (200, {"id": 1, "version": 1})


def test_a_refusal_before_the_body_is_read_reaches_the_client(registry: RegistryProcess) -> None:
    """413 and 401 are answered before the body is read; the client, still writing, must read them.

    Without the server's lingering close about half of these ended in a broken pipe or a reset.
    """
    huge = json.dumps({"schema": "x" * (2 << 20)}).encode()
    for _ in range(10):
        assert request(registry, "POST", "/subjects/x-value/versions", huge)[0] == 413
        assert request(registry, "POST", "/subjects/x-value/versions", huge, auth=None)[0] == 401
    assert request(registry, "GET", "/subjects") == (200, [])


def test_a_chunked_body_and_a_bad_length_close_the_connection(registry: RegistryProcess) -> None:
    auth = "Basic " + base64.b64encode(USER_INFO.encode()).decode()
    with socket.create_connection((registry.host, registry.port), timeout=10) as sock:
        sock.sendall(
            f"POST /subjects/x-value/versions HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".encode()
        )
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 411")
    status, _ = request(registry, "POST", "/subjects/x-value/versions", b"{}", **{"Content-Length": "-5"})
    assert status == 400


def test_subject_names_with_slashes_and_unicode_round_trip(registry: RegistryProcess) -> None:
    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": USER_INFO})
    for name in ("team/a-value", "vidéo ☃-value", "a%2Fb-value"):
        schema_id = client.register_schema(name, Schema(SCHEMA, "AVRO"))
        assert client.get_latest_version(name).subject == name
        assert client.get_latest_version(name).schema_id == schema_id
    assert sorted(client.get_subjects()) == sorted(["team/a-value", "vidéo ☃-value", "a%2Fb-value"])


def test_tls_with_the_clients_ca_and_credentials(tmp_path: Path) -> None:
    """HTTPS on the registry's port; confluent-kafka's client verifies it with ssl.ca.location."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    registry = start_registry_process(
        data_dir=tmp_path / "registry", user_info=USER_INFO, extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]
    )
    try:
        assert registry.url.startswith("https://")
        client = SchemaRegistryClient(
            {"url": registry.url, "basic.auth.user.info": USER_INFO, "ssl.ca.location": str(cert)}
        )
        assert client.register_schema("x-value", Schema(SCHEMA, "AVRO")) == 1
        untrusted = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": USER_INFO, "max.retries": 0})
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            untrusted.get_subjects()
        # Plain HTTP on the TLS port gets nothing it can use, and the server keeps serving.
        with socket.create_connection((registry.host, registry.port), timeout=10) as sock:
            sock.sendall(b"GET /subjects HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not sock.recv(1024).startswith(b"HTTP/1.1 200")
        assert client.get_subjects() == ["x-value"]
    finally:
        registry.stop()
