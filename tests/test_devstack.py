"""``manage.py devstack`` (what ``make run`` runs), end to end through real processes.

Starts the whole local stack in a temporary var/ with free ports, waits for /readyz, checks the
admin login page over HTTP, then stops it with SIGINT (Ctrl-C) and checks that every child exited.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver.errors import ServerException

from analytics_platform.devstack.processes import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _start(var_dir: Path, ports: dict[str, int], output: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ANALYTICS_VAR_DIR": str(var_dir),
        "PORT": str(ports["web"]),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{ports['kafka']}",
        "CLICKHOUSE_PORT": str(ports["clickhouse"]),
        "ANALYTICS_ADMIN_USER": "ops",
        "ANALYTICS_ADMIN_PASSWORD": "a-long-test-password",
        "STREAMS_METRICS_PORT": str(ports["streams_metrics"]),
        # setdefault: a second start on the same ports finds the registry (and its var/) again.
        "SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{ports.setdefault('registry', free_port())}",
        **extra_env,
    }
    env.pop("DATABASE_URL", None)  # the embedded default: SQLite under var/
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "devstack"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def pump() -> None:
        assert process.stdout is not None
        for line in iter(process.stdout.readline, b""):
            output.append(line.decode("utf-8", "replace"))

    threading.Thread(target=pump, daemon=True).start()
    return process


def _wait_ready(base: str, process: subprocess.Popen[bytes], output: list[str], timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        assert process.poll() is None, "devstack exited early:\n" + "".join(output[-80:])
        try:
            status, _ = _get(f"{base}/readyz")
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("devstack never became ready:\n" + "".join(output[-80:]))


def _stop(process: subprocess.Popen[bytes], output: list[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(60) == 0, "".join(output[-40:])
    finally:
        if process.poll() is None:
            process.kill()


def test_devstack_runs_the_service_and_stops_cleanly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("web", "kafka", "clickhouse", "streams_metrics")}
    base = f"http://127.0.0.1:{ports['web']}"
    output: list[str] = []
    process = _start(tmp_path / "var", ports, output)
    try:
        _wait_ready(base, process, output)
        status, body = _get(f"{base}/readyz")
        ready = json.loads(body)
        assert status == 200
        assert {dep["status"] for dep in ready["dependencies"].values()} == {"up"}
        assert "schema_registry" in ready["dependencies"]
        status, body = _get(f"{base}/admin/login/")
        assert status == 200 and b"csrfmiddlewaretoken" in body
        # Styled: the stylesheet it links to (hashed by the devstack's collectstatic) is served.
        [css] = re.findall(rb'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', body)
        status, body = _get(f"{base}{css.decode()}")
        assert status == 200 and b"--body-bg" in body
        status, body = _get(f"{base}/prometheus/metrics")
        assert status == 200 and b"django_http_requests" in body
        # The stack's ClickHouse server requires the password it generated under var/ (which its
        # own web, streams and Celery processes used to get /readyz up): no password is refused.
        password = (tmp_path / "var" / "clickhouse_password").read_text().strip()
        assert len(password) >= 40
        for attempt in ("", password[:-1]):
            with pytest.raises(ServerException) as refused:
                Client("127.0.0.1", port=ports["clickhouse"], password=attempt).execute("SELECT 1")
            assert refused.value.code == 516
        assert Client("127.0.0.1", port=ports["clickhouse"], password=password).execute("SELECT 1") == [(1,)]
    finally:
        _stop(process, output)
    supervisor = [line.split("|", 1)[1].strip() for line in output if line.startswith("devstack ")]
    for name in ("broker", "clickhouse", "registry", "web", "streams", "worker", "beat"):
        assert any(line.startswith(f"started {name} (pid") for line in supervisor), supervisor
    # Nothing died while it ran: the supervisor announces a child's exit before stopping the stack.
    assert not any("exited with" in line for line in supervisor), supervisor
    assert supervisor[-1] == "stopped"
    labels = {line.split("|", 1)[0].strip() for line in output if "|" in line}
    assert {"broker", "clickhouse", "web", "streams"} <= labels, labels  # their output is labelled
    # Second start on the same var/: the data survives (the admin user is not recreated).
    output2: list[str] = []
    process = _start(tmp_path / "var", ports, output2)
    try:
        _wait_ready(base, process, output2)
    finally:
        _stop(process, output2)
    assert not any("created admin user" in line for line in output2)
    # The static files were collected once: the second start found them current.
    assert any("static files collected" in line for line in output)
    assert not any("static files collected" in line for line in output2)

    # The schemas kept their ids across the restart (registered again: the same ids, no new versions).
    def schema_lines(lines: list[str]) -> list[str]:
        return sorted(line.split("|", 1)[1].strip() for line in lines if "| schema " in line)

    assert schema_lines(output) == schema_lines(output2) and len(schema_lines(output)) == 3, schema_lines(output2)


def test_every_process_logs_json_with_request_id(tmp_path: Path) -> None:
    env = {**os.environ, "ANALYTICS_VAR_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    code = (
        "import structlog; structlog.contextvars.bind_contextvars(request_id='r-1');"
        "structlog.get_logger('probe').info('hello', answer=42)"
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "shell", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    hello = [line for line in lines if line.get("event") == "hello"]
    assert hello, result.stdout
    assert hello[0]["answer"] == 42
    assert hello[0]["request_id"] == "r-1"
    assert hello[0]["level"] == "info"
    assert hello[0]["logger"] == "probe"
