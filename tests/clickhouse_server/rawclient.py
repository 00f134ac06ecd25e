"""A native-protocol client that sends exactly the bytes a test wants, malformed ones included.

clickhouse-driver cannot send a lying length or stop halfway through a packet, so the limit tests
write packets themselves with the server's own encoders. Revision 54429 keeps packets short: the
client info is a single NO_QUERY byte and there is no interserver secret field.
"""

from __future__ import annotations

import socket
import ssl
import time

from analytics_platform.clickhouse_server.protocol import (
    ByteReader,
    ClientPacket,
    ServerPacket,
    encode_str,
    encode_varint,
)

REVISION = 54429


def hello_packet(user: str = "default", password: str = "") -> bytes:
    return (
        encode_varint(ClientPacket.HELLO)
        + encode_str("raw-test")
        + encode_varint(1)
        + encode_varint(0)
        + encode_varint(REVISION)
        + encode_str("")
        + encode_str(user)
        + encode_str(password)
    )


def query_packet(sql: str, *, query_id: str = "", compression: bool = False) -> bytes:
    return (
        encode_varint(ClientPacket.QUERY)
        + encode_str(query_id)
        + b"\x00"  # client info: query kind NO_QUERY, nothing follows
        + encode_str("")  # end of settings
        + encode_varint(2)  # stage Complete
        + encode_varint(int(compression))
        + encode_str(sql)
    )


# An empty Data packet ends the (external-table) data a query is followed by.
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
EMPTY_DATA = encode_varint(ClientPacket.DATA) + encode_str("") + BLOCK_INFO + encode_varint(0) + encode_varint(0)


class RawClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=source_address)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.reader = ByteReader(self._recv)

    def _recv(self, n: int) -> bytes:
        try:
            return self.sock.recv(max(n, 65536))
        except ConnectionResetError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, password: str = "") -> None:
        """Hello with ``password`` (the server's, ``ServerProcess.password``), then its Hello."""
        self.send(hello_packet(password=password))
        assert self.reader.read_varint() == ServerPacket.HELLO
        self.reader.read_str()
        for _ in range(3):
            self.reader.read_varint()
        self.reader.read_str()  # timezone
        self.reader.read_str()  # display name
        self.reader.read_varint()  # patch

    def read_exception(self) -> tuple[int, str]:
        """The next packet, which must be an Exception: (code, message)."""
        packet_type = self.reader.read_varint()
        assert packet_type == ServerPacket.EXCEPTION, f"expected Exception, got packet {packet_type}"
        code = self.reader.read_i32()
        self.reader.read_str()  # name
        return code, self.reader.read_str()

    def seconds_until_closed(self, limit: float) -> float:
        return seconds_until_closed(self.sock, limit)

    def close(self) -> None:
        self.sock.close()


def seconds_until_closed(sock: socket.socket, limit: float) -> float:
    """Read (and drop) whatever comes until the server closes; how long that took."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started
