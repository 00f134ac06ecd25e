"""Start the registry as a subprocess, for tests and the dev stack; ready once it answers over HTTP."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class RegistryProcess:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    data_dir: Path
    user_info: str | None = None
    scheme: str = "http"
    _port_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def client_config(self) -> dict[str, Any]:
        """Configuration for confluent-kafka's ``SchemaRegistryClient`` reaching this registry."""
        config: dict[str, Any] = {"url": self.url}
        if self.user_info:
            config["basic.auth.user.info"] = self.user_info
        return config

    def stop(self, timeout: float = 15.0) -> int:
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


def ping(host: str, port: int, *, user_info: str | None = None, tls: bool = False, timeout: float = 2.0) -> bool:
    """True once GET /config answers 200 (over TLS unverified: a liveness probe, not a client)."""
    headers = {}
    if user_info:
        headers["Authorization"] = "Basic " + base64.b64encode(user_info.encode()).decode()
    connection = (
        http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl._create_unverified_context())  # noqa: S323
        if tls
        else http.client.HTTPConnection(host, port, timeout=timeout)
    )
    try:
        connection.request("GET", "/config", headers=headers)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def start_registry_process(
    *,
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int | None = None,
    user_info: str | None = None,
    timeout: float = 30.0,
    log_file: Path | None = None,
    extra_args: list[str] | None = None,
) -> RegistryProcess:
    """Launch ``python -m analytics_platform.schema_registry`` and wait until it answers."""
    port_dir = tempfile.TemporaryDirectory(prefix="registry-port-")
    port_file = Path(port_dir.name) / "port"
    cmd = [
        sys.executable,
        "-m",
        "analytics_platform.schema_registry",
        "--host",
        host,
        "--port",
        str(port or 0),
        "--data-dir",
        str(data_dir),
        "--port-file",
        str(port_file),
        *(extra_args or []),
    ]
    env = dict(os.environ)
    env.pop("SCHEMA_REGISTRY_SERVER_USER_INFO", None)
    if user_info:
        env["SCHEMA_REGISTRY_SERVER_USER_INFO"] = user_info
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    stderr: IO[bytes] | None = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115
    try:
        process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=stderr)
    finally:
        if stderr is not None:
            stderr.close()
    tls = "--tls-cert" in (extra_args or [])
    registry = RegistryProcess(process, host, 0, data_dir, user_info, "https" if tls else "http", port_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            registry._cleanup()
            raise RuntimeError(f"schema registry exited with code {process.returncode} during startup")
        if port_file.exists():
            registry.port = int(port_file.read_text())
            if ping(host, registry.port, user_info=user_info, tls=tls):
                return registry
        time.sleep(0.05)
    registry.kill()
    raise TimeoutError(f"schema registry did not answer within {timeout}s")
