"""Connection cap, timeouts, accept() errors and bounded packet fields, against the real server process.

Each server runs with short timeouts so the tests take seconds; the rules are the same at the
defaults (analytics_platform/clickhouse_server/limits.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import NetworkError, ServerException

from analytics_platform.clickhouse_server.compression import METHOD_LZ4, _checksum
from analytics_platform.clickhouse_server.protocol import ClientPacket, encode_str, encode_varint
from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process

from .rawclient import BLOCK_INFO, EMPTY_DATA, RawClient, hello_packet, query_packet

pytestmark = pytest.mark.clickhouse

IDLE_SOCKETS = 2000


def _start(base: Path, *flags: str) -> ServerProcess:
    return start_server_process(data_dir=base / "data", log_file=base / "server.log", extra_args=flags)


@contextlib.contextmanager
def _server(base: Path, *flags: str) -> Iterator[ServerProcess]:
    server = _start(base, *flags)
    try:
        yield server
    finally:
        assert server.stop() == 0, (base / "server.log").read_text()[-4000:]


def _log(server: ServerProcess) -> str:
    return (server.data_dir.parent / "server.log").read_text()


def _sockets(pid: int) -> int:
    """Socket descriptors the process holds (the listener, clients, chdb's own if any)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module", autouse=True)
def _enough_descriptors() -> None:
    # 2,000 client sockets in this process: raise the soft limit to the hard one if it is lower.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_SOCKETS + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= IDLE_SOCKETS + 500, "hard limit too low"


def _open_idle(server: ServerProcess, count: int) -> list[socket.socket]:
    return [socket.create_connection((server.host, server.port), timeout=10) for _ in range(count)]


def _still_open(sock: socket.socket) -> bool:
    """No EOF from the server (whatever it sent before, e.g. a refusal, is read and dropped)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True  # nothing more to read and no EOF: the server holds it
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def _timed_query(server: ServerProcess) -> float:
    started = time.monotonic()
    client = Client(**server.client_kwargs(), connect_timeout=5, send_receive_timeout=10)
    try:
        assert client.execute("SELECT 40 + 2") == [(42,)]
    finally:
        client.disconnect()
    return time.monotonic() - started


def test_2000_idle_sockets_are_all_held_while_another_client_is_served(tmp_path: Path) -> None:
    with _server(tmp_path, "--max-connections", "2100", "--handshake-timeout", "60") as server:
        baseline = _timed_query(server)
        time.sleep(0.5)  # the session of that query has closed its socket
        before, rss_before = _sockets(server.pid), _rss_mib(server.pid)
        sockets = _open_idle(server, IDLE_SOCKETS)
        try:
            deadline = time.monotonic() + 30
            while _sockets(server.pid) < before + IDLE_SOCKETS and time.monotonic() < deadline:
                time.sleep(0.1)
            held = _sockets(server.pid) - before
            rss = _rss_mib(server.pid)
            elapsed = _timed_query(server)
            assert held == IDLE_SOCKETS  # all accepted and kept, each by its session
            assert all(_still_open(sock) for sock in sockets)
        finally:
            for sock in sockets:
                sock.close()
    print(f"{IDLE_SOCKETS} idle sockets held, RSS {rss_before:.0f} -> {rss:.0f} MiB")
    print(f"query while held: {elapsed:.3f}s (first query: {baseline:.3f}s)")
    assert elapsed < 5


def test_over_the_cap_a_client_is_told_and_the_slots_free_at_the_handshake_timeout(tmp_path: Path) -> None:
    with _server(tmp_path, "--max-connections", "64", "--handshake-timeout", "15") as server:
        sockets = _open_idle(server, 64)  # silent: they fill the cap until the handshake timeout
        try:
            time.sleep(0.5)
            with pytest.raises(ServerException) as refused:
                Client(**server.client_kwargs(), connect_timeout=5).execute("SELECT 1")
            assert refused.value.code == 749 and "TCP_CONNECTION_LIMIT_REACHED" in refused.value.message
            sockets += _open_idle(server, IDLE_SOCKETS - 64)  # all refused
            # The silent ones are dropped at the handshake deadline; the server answers again while
            # this process still holds all 2,000 sockets.
            deadline = time.monotonic() + 30
            while True:
                try:
                    elapsed = _timed_query(server)
                    break
                except (ServerException, NetworkError, EOFError):  # refused: told so, or closed at once
                    assert time.monotonic() < deadline, "still refused long after the handshake timeout"
                    time.sleep(0.2)
            # Sockets admitted as slots freed are dropped at their own deadline.
            deadline = time.monotonic() + 20
            while (held := sum(_still_open(sock) for sock in sockets)) and time.monotonic() < deadline:
                time.sleep(0.5)
        finally:
            for sock in sockets:
                sock.close()
        log = _log(server)
    assert held == 0  # every silent socket was dropped: refused over the cap or timed out
    assert "The server has reached its limit of 64 connections" in log
    print(f"cap 64, {IDLE_SOCKETS} idle sockets: refused with 749, then served in {elapsed:.3f}s")


@pytest.fixture(scope="module")
def short_timeouts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("timeouts")
    flags = ["--handshake-timeout", "1", "--packet-timeout", "1", "--receive-timeout", "2"]
    flags += ["--idle-timeout", "3", "--send-timeout", "2", "--max-packet-bytes", str(16 << 20)]
    with _server(base, *flags) as server:
        yield server


def test_a_silent_client_is_dropped_at_the_handshake_timeout(short_timeouts: ServerProcess) -> None:
    silent = RawClient(short_timeouts.host, short_timeouts.port)
    assert 0.8 < silent.seconds_until_closed(10) < 3


def test_a_client_trickling_its_hello_is_dropped_at_the_handshake_deadline(short_timeouts: ServerProcess) -> None:
    # Each byte comes well within the packet timeout; the deadline covers the Hello as a whole.
    slow = RawClient(short_timeouts.host, short_timeouts.port)
    started = time.monotonic()
    with contextlib.suppress(OSError):
        for byte in hello_packet():
            slow.send(bytes([byte]))
            time.sleep(0.2)
            if time.monotonic() - started > 5:
                break
    slow.seconds_until_closed(10)
    assert 0.8 < time.monotonic() - started < 3  # 1 s after connecting, though bytes kept coming


def test_an_idle_connection_is_closed_and_the_driver_reconnects(short_timeouts: ServerProcess) -> None:
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.handshake(short_timeouts.password or "")
    assert 2.5 < raw.seconds_until_closed(10) < 6  # idle timeout 3 s, not the 1 s packet timeout

    client = Client(**short_timeouts.client_kwargs())
    assert client.execute("SELECT 1") == [(1,)]
    time.sleep(3.5)
    assert client.execute("SELECT 2") == [(2,)]  # the driver's ping saw the close and reconnected
    client.disconnect()


def test_a_half_sent_packet_is_dropped_at_the_packet_timeout(short_timeouts: ServerProcess) -> None:
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.handshake(short_timeouts.password or "")
    raw.send(query_packet("SELECT 1")[:5])
    assert 0.8 < raw.seconds_until_closed(10) < 2.5


def test_an_insert_waiting_for_data_times_out_with_socket_timeout(short_timeouts: ServerProcess) -> None:
    Client(**short_timeouts.client_kwargs()).execute("CREATE TABLE IF NOT EXISTS waits (x UInt8) ENGINE = Memory")
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.handshake(short_timeouts.password or "")
    started = time.monotonic()
    raw.send(query_packet("INSERT INTO waits VALUES") + EMPTY_DATA)  # then no blocks, no end
    raw.sock.settimeout(10)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := raw.sock.recv(65536):
            received += chunk
    assert 1.5 < time.monotonic() - started < 5  # receive timeout 2 s
    assert b"SOCKET_TIMEOUT" in received


def test_a_client_that_does_not_read_its_results_is_dropped_at_the_send_timeout(
    short_timeouts: ServerProcess,
) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((short_timeouts.host, short_timeouts.port))
    sock.sendall(hello_packet(password=short_timeouts.password or ""))
    time.sleep(0.2)
    sock.sendall(query_packet("SELECT toString(number) FROM numbers(1000000000)") + EMPTY_DATA)
    deadline = time.monotonic() + 15
    while "send timeout" not in _log(short_timeouts) and time.monotonic() < deadline:
        time.sleep(0.2)
    sock.close()
    assert "send timeout" in _log(short_timeouts)
    assert Client(**short_timeouts.client_kwargs()).execute("SELECT 3") == [(3,)]


@pytest.mark.parametrize(
    ("packet", "code"),
    [
        # A query id claiming 1 TiB.
        (encode_varint(ClientPacket.QUERY) + encode_varint(1 << 40) + b"x", 131),
        # A query text over --max-packet-bytes (16 MiB here).
        (query_packet("")[:-1] + encode_varint(32 << 20) + b"SELECT", 229),
        # A block of 2^36 UInt64 rows: 512 GiB it would have to buffer.
        (
            query_packet("SELECT 1")
            + encode_varint(ClientPacket.DATA)
            + encode_str("")
            + BLOCK_INFO
            + encode_varint(1)
            + encode_varint(1 << 36)
            + encode_str("x")
            + encode_str("UInt64"),
            307,
        ),
        # A block claiming 2^60 columns.
        (
            query_packet("SELECT 1")
            + encode_varint(ClientPacket.DATA)
            + encode_str("")
            + BLOCK_INFO
            + encode_varint(1 << 60)
            + b"\x00",
            307,
        ),
    ],
    ids=["string-length", "query-text", "block-bytes", "block-columns"],
)
def test_a_lying_length_is_refused_without_allocating_and_the_server_goes_on(
    short_timeouts: ServerProcess, packet: bytes, code: int
) -> None:
    before = _rss_mib(short_timeouts.pid)
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.handshake(short_timeouts.password or "")
    raw.send(packet)

    assert raw.read_exception()[0] == code
    assert raw.seconds_until_closed(5) < 2  # closed at once: the stream position is lost
    assert _rss_mib(short_timeouts.pid) - before < 64
    assert Client(**short_timeouts.client_kwargs()).execute("SELECT 4") == [(4,)]


def test_an_oversized_hello_field_is_refused(short_timeouts: ServerProcess) -> None:
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.send(encode_varint(ClientPacket.HELLO) + encode_varint(1 << 62) + b"x")

    assert raw.read_exception()[0] == 131
    assert raw.seconds_until_closed(5) < 2
    assert Client(**short_timeouts.client_kwargs()).execute("SELECT 5") == [(5,)]


def test_a_decompression_bomb_is_refused_and_the_server_goes_on(short_timeouts: ServerProcess) -> None:
    # A compressed query whose data frame claims to inflate to 4 GiB.
    body = struct.pack("<BII", METHOD_LZ4, 9 + 4, 0xFFFF_FFFF) + b"\x00" * 4
    raw = RawClient(short_timeouts.host, short_timeouts.port)
    raw.handshake(short_timeouts.password or "")
    raw.send(query_packet("SELECT 1", compression=True) + encode_varint(ClientPacket.DATA) + encode_str(""))
    raw.send(_checksum(body) + body)

    code, message = raw.read_exception()
    assert code == 39 and "TOO_LARGE_SIZE_COMPRESSED" in message
    assert raw.seconds_until_closed(5) < 2
    assert Client(**short_timeouts.client_kwargs(), compression="lz4").execute("SELECT 6") == [(6,)]


def test_accept_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    with _server(tmp_path, "--handshake-timeout", "60") as server:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir(f"/proc/{server.pid}/fd"))
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (in_use + 20, hard))
        sockets = _open_idle(server, 60)  # 20 accepted, the rest wait in the backlog: EMFILE
        try:
            deadline = time.monotonic() + 10
            while "Too many open files" not in _log(server) and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # a burst of failing accept() calls, backing off
            assert server.process.poll() is None
            waiting: list[object] = []
            blocked = threading.Thread(target=lambda: waiting.append(_timed_query(server)), daemon=True)
            blocked.start()
            blocked.join(1.5)
            assert not waiting  # no descriptor for it yet: it waits in the backlog
        finally:
            for sock in sockets:
                sock.close()
        blocked.join(15)
        assert waiting, "the waiting client was never served"
        assert _timed_query(server) < 5
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        log = _log(server)
    assert log.count("pausing accepts until resources are freed") == 1  # once per burst
    assert "accepting again after" in log


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {"CLICKHOUSE_SERVER_MAX_CONNECTIONS": "0"}, "must be positive"),
        (["--idle-timeout", "soon"], {}, "not a number"),
        (["--handshake-timeout", "-1"], {}, "must be positive"),
    ],
)
def test_bad_limit_settings_are_refused_at_start(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    command = [sys.executable, "-m", "analytics_platform.clickhouse_server", "--data-dir", str(tmp_path / "ch"), *args]
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env}
    )
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "ch").exists()


def test_the_per_address_cap_refuses_one_address_and_serves_another(tmp_path: Path) -> None:
    flags = ("--max-connections-per-ip", "5", "--handshake-timeout", "30")
    with _server(tmp_path, *flags) as server:
        # The same loopback server, reached from another loopback source address.
        held = [socket.create_connection((server.host, server.port), source_address=("127.0.0.2", 0)) for _ in range(5)]
        try:
            time.sleep(0.3)
            sixth = RawClient(server.host, server.port, source_address=("127.0.0.2", 0))
            sixth.send(hello_packet())
            code, message = sixth.read_exception()
            assert code == 749 and "127.0.0.2 has reached its limit of 5 connections" in message
            sixth.close()
            assert _timed_query(server) < 5  # 127.0.0.1 is not affected
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)  # the five sessions end; the address may connect again
        again = RawClient(server.host, server.port, source_address=("127.0.0.2", 0))
        again.handshake(server.password or "")
        again.close()
