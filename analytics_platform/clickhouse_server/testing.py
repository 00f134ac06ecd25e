"""Start the server as a subprocess, for tests and the dev stack.

A separate process (not a thread) because chdb locks its data directory per process and because
tests must be able to ``kill -9`` it. Readiness is a real protocol round trip (Hello + Ping), so
``start_server_process`` returns only once clients can connect.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .protocol import (
    SERVER_REVISION,
    ByteReader,
    ClientPacket,
    ServerPacket,
    encode_str,
    encode_varint,
)


@dataclass
class ServerProcess:
    """A running server subprocess."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    data_dir: Path
    user: str | None = None
    password: str | None = None
    _port_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    ca_certs: Path | None = None  # set when the server speaks TLS: the CA its certificate chains to

    @property
    def pid(self) -> int:
        return self.process.pid

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``clickhouse_driver.Client`` reaching this server."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        if self.ca_certs is not None:
            kwargs.update(secure=True, ca_certs=str(self.ca_certs))
        return kwargs

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for a graceful exit; return the exit code (kills after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._cleanup()
        return int(self.process.returncode)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._port_dir is not None:
            self._port_dir.cleanup()
            self._port_dir = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_server_process(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    insecure_no_password: bool = False,
    timeout: float = 60.0,
    log_file: Path | None = None,
    log_level: str = "INFO",
    extra_args: Sequence[str] = (),
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    ca_certs: Path | None = None,
) -> ServerProcess:
    """Launch ``python -m analytics_platform.clickhouse_server`` and wait until it answers a ping.

    ``port=None`` lets the server pick a free port. ``password=None`` generates one (the server
    requires a password; ``insecure_no_password`` starts it without), handed to clients by
    ``ServerProcess.client_kwargs``; it travels in the environment, not argv (``ps`` shows argv).
    Server logs go to ``log_file`` (appended) or to this process's stderr. ``extra_args`` are more
    command-line flags (limits, timeouts). With ``tls_cert``/``tls_key`` the server speaks TLS, and
    ``ca_certs`` is what the readiness ping and ``client_kwargs()`` verify it with.
    """
    if password is None and not insecure_no_password:
        password = secrets.token_urlsafe(24)
    port_dir = tempfile.TemporaryDirectory(prefix="chs-port-")
    port_file = Path(port_dir.name) / "port"
    cmd = [
        sys.executable,
        "-m",
        "analytics_platform.clickhouse_server",
        "--host",
        host,
        "--port",
        str(port or 0),
        "--data-dir",
        str(data_dir),
        "--port-file",
        str(port_file),
        "--log-level",
        log_level,
    ]
    if user is not None:
        cmd += ["--user", user]
    if tls_cert is not None and tls_key is not None:
        cmd += ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)]
    cmd += list(extra_args)
    env = dict(os.environ)
    env.pop("CLICKHOUSE_SERVER_PASSWORD", None)
    if password is not None:
        env["CLICKHOUSE_SERVER_PASSWORD"] = password
    if insecure_no_password:
        cmd.append("--insecure-no-password")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    stderr: IO[bytes] | None = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115
    try:
        process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=stderr)
    finally:
        if stderr is not None:
            stderr.close()
    server = ServerProcess(process, host, 0, data_dir, user, password, port_dir, ca_certs)
    context = ssl.create_default_context(cafile=str(ca_certs)) if ca_certs is not None else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server._cleanup()
            raise RuntimeError(f"clickhouse server exited with code {process.returncode} during startup")
        if port_file.exists():
            server.port = int(port_file.read_text())
            if ping(host, server.port, user=user or "default", password=password or "", tls=context):
                return server
        time.sleep(0.05)
    server.kill()
    raise TimeoutError(f"clickhouse server did not answer a ping within {timeout}s")


def ping(
    host: str,
    port: int,
    *,
    user: str = "default",
    password: str = "",
    timeout: float = 2.0,
    tls: ssl.SSLContext | None = None,
) -> bool:
    """True if a native-protocol server at host:port completes a handshake and answers Ping."""
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if tls is not None:
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
            hello = (
                encode_varint(ClientPacket.HELLO)
                + encode_str("chs-ping")
                + encode_varint(1)
                + encode_varint(0)
                + encode_varint(SERVER_REVISION)
                + encode_str("")
                + encode_str(user)
                + encode_str(password)
            )
            sock.sendall(hello)
            reader = ByteReader(sock.recv)
            if reader.read_varint() != ServerPacket.HELLO:
                return False
            reader.read_str()  # name
            for _ in range(3):
                reader.read_varint()
            reader.read_str()  # timezone
            reader.read_str()  # display name
            reader.read_varint()  # patch
            sock.sendall(encode_varint(ClientPacket.PING))
            return reader.read_varint() == ServerPacket.PONG
    except (OSError, EOFError):
        return False
