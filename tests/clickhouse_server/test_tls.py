"""TLS on the native port, end to end: clickhouse-driver, the Django settings path, refusals, slowloris.

A CA and a server certificate for 127.0.0.1/localhost are made at test time with ``cryptography``;
a second, unrelated CA stands for a client that trusts someone else.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError
from clickhouse_driver.errors import ServerException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process

from .rawclient import seconds_until_closed

pytestmark = pytest.mark.clickhouse

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("test ClickHouse CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(ca=base / "ca.pem", cert=base / "server.pem", key=base / "server.key", other_ca=base / "other-ca.pem")
    pki.ca.write_bytes(_pem(ca_cert))
    pki.cert.write_bytes(_pem(cert))
    pki.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pki.key.chmod(0o600)
    pki.other_ca.write_bytes(_pem(_ca("someone else's CA")[1]))
    return pki


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("tls")
    server = start_server_process(
        data_dir=base / "data",
        log_file=base / "server.log",
        tls_cert=pki.cert,
        tls_key=pki.key,
        ca_certs=pki.ca,
        extra_args=["--handshake-timeout", "1.5"],
    )
    yield server
    assert server.stop() == 0, (base / "server.log").read_text()[-4000:]


def test_clickhouse_driver_with_secure_and_the_ca_works(tls_server: ServerProcess) -> None:
    client = Client(**tls_server.client_kwargs(), compression="lz4")
    try:
        assert client.execute("SELECT 1") == [(1,)]
        client.execute("CREATE TABLE IF NOT EXISTS over_tls (n UInt64, s String) ENGINE = MergeTree ORDER BY n")
        client.execute("INSERT INTO over_tls VALUES", [(i, str(i)) for i in range(50_000)])
        assert client.execute("SELECT count(), sum(n) FROM over_tls") == [(50_000, 1_249_975_000)]
        rows = client.execute_iter("SELECT number FROM numbers(200000)", settings={"max_block_size": 1000})
        assert sum(1 for _ in rows) == 200_000
        # Cancel mid-stream over TLS: the server sees the Cancel though it sits in TLS buffers.
        stream = client.execute_iter("SELECT number FROM numbers(100000000)", settings={"max_block_size": 1000})
        assert next(iter(stream)) == (0,)
        client.cancel()
        assert client.execute("SELECT 2") == [(2,)]
    finally:
        client.disconnect()


def test_over_the_cap_a_tls_client_is_told_so_over_tls(tmp_path: Path, pki: Pki) -> None:
    server = start_server_process(
        data_dir=tmp_path / "data",
        log_file=tmp_path / "server.log",
        tls_cert=pki.cert,
        tls_key=pki.key,
        ca_certs=pki.ca,
        extra_args=["--max-connections", "1"],
    )
    try:
        first = Client(**server.client_kwargs())
        # The readiness ping's session may still hold the only slot for a moment (it opens and
        # closes a chdb session now that it authenticates): retry the refusal until it is gone.
        deadline = time.monotonic() + 5
        while True:
            try:
                assert first.execute("SELECT 1") == [(1,)]  # holds the only slot
                break
            except ServerException as exc:
                if exc.code != 749 or time.monotonic() > deadline:
                    raise
                first.disconnect()
                time.sleep(0.05)
        with pytest.raises(ServerException) as refused:
            Client(**server.client_kwargs()).execute("SELECT 1")
        assert refused.value.code == 749
        first.disconnect()
    finally:
        assert server.stop() == 0


def test_a_plain_client_is_refused(tls_server: ServerProcess) -> None:
    plain = Client(host=tls_server.host, port=tls_server.port, connect_timeout=3, send_receive_timeout=3)
    with pytest.raises((DriverError, EOFError, OSError)):
        plain.execute("SELECT 1")
    assert Client(**tls_server.client_kwargs()).execute("SELECT 3") == [(3,)]


def test_a_client_trusting_another_ca_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    other = Client(host=tls_server.host, port=tls_server.port, secure=True, ca_certs=str(pki.other_ca))
    with pytest.raises((DriverError, ssl.SSLError)) as refused:
        other.execute("SELECT 1")
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_1_1_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError), socket.create_connection((tls_server.host, tls_server.port), timeout=5) as sock:
        context.wrap_socket(sock, server_hostname=tls_server.host)


def test_a_stalled_tls_handshake_is_dropped_and_does_not_block_others(tls_server: ServerProcess) -> None:
    # Silent, and half a ClientHello: each holds a session thread, never the accept loop.
    silent = socket.create_connection((tls_server.host, tls_server.port), timeout=10)
    partial = socket.create_connection((tls_server.host, tls_server.port), timeout=10)
    partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello record's start
    started = time.monotonic()
    try:
        client = Client(**tls_server.client_kwargs())
        assert client.execute("SELECT 4") == [(4,)]
        served = time.monotonic() - started
        client.disconnect()
        for stalled in (silent, partial):
            seconds_until_closed(stalled, 10)
            assert 1.2 < time.monotonic() - started < 4  # the 1.5 s handshake timeout
    finally:
        silent.close()
        partial.close()
    assert served < 1.0  # not queued behind the stalled handshakes


def _django(server: ServerProcess, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.update(
        DJANGO_SETTINGS_MODULE="analytics_platform.settings",
        CLICKHOUSE_HOST=server.host,
        CLICKHOUSE_PORT=str(server.port),
        CLICKHOUSE_DATABASE="default",
        CLICKHOUSE_PASSWORD=server.password or "",
        PYTHONPATH=str(REPO),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup()\n{code}"],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


_ORM_AND_CLIENT = """
from django.db import connections
from analytics_platform.clickhouse import client_get
with connections["clickhouse"].cursor() as cursor:
    cursor.execute("SELECT 20 + 1")
    print("orm", cursor.fetchall())
print("client", client_get(database="default").execute("SELECT 21 * 2"))
"""


def test_django_reaches_the_server_over_tls_with_clickhouse_secure(tls_server: ServerProcess, pki: Pki) -> None:
    result = _django(tls_server, _ORM_AND_CLIENT, CLICKHOUSE_SECURE="1", CLICKHOUSE_CA_CERTS=str(pki.ca))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "orm [(21,)]" in result.stdout and "client [(42,)]" in result.stdout


def test_django_refuses_a_server_its_ca_does_not_vouch_for(tls_server: ServerProcess, pki: Pki) -> None:
    result = _django(tls_server, _ORM_AND_CLIENT, CLICKHOUSE_SECURE="1", CLICKHOUSE_CA_CERTS=str(pki.other_ca))

    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


def _serve(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "analytics_platform.clickhouse_server", "--data-dir", str(tmp_path / "ch"), *args]
    # A password, so that the TLS checks are what refuses (a missing password is refused first).
    env = {**os.environ, "CLICKHOUSE_SERVER_PASSWORD": "tls-tests-password"}
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def test_the_cli_refuses_half_or_broken_tls_settings(tmp_path: Path, pki: Pki) -> None:
    half = _serve(tmp_path, "--tls-cert", str(pki.cert))
    assert half.returncode == 2 and "--tls-cert and --tls-key go together" in half.stderr
    broken = _serve(tmp_path, "--tls-cert", str(pki.ca), "--tls-key", str(pki.key))  # key of another cert
    assert broken.returncode == 2 and "cannot load the TLS certificate/key" in broken.stderr
    assert not (tmp_path / "ch").exists()  # refused before touching the data directory
