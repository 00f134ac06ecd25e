"""The BigQuery emulator (``bqemulator``) for the ETL tests, with the real google-cloud-bigquery client.

Started once per session on free ports, with its own HOME (where DuckDB looks for extensions),
data dir and upload staging dir under the session's tmp dir. Offline, DuckDB cannot download its
spatial extension, so it is installed once from the file shipped in the ``duckdb-extension-spatial``
wheel (see ENVIRONMENT.md). The emulator runs ``--persistent`` so a test can kill it in the middle
of an export and start it again on the same data.

If the emulator does not come up the fixture fails with its log: the tests are not skipped.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from analytics_platform.clickhouse import client_get
from analytics_platform.devstack.processes import free_port
from tests.clickhouse_tables import truncate_all

PROJECT = "etl-test"


def _spatial_extension_file() -> Path:
    spec = importlib.util.find_spec("duckdb_extension_spatial")
    if spec is None or spec.origin is None:
        raise RuntimeError("duckdb-extension-spatial is not installed (pip install '.[dev]')")
    root = Path(spec.origin).resolve().parent / "extensions"
    found = sorted(root.glob("*/spatial.duckdb_extension"))
    if not found:
        raise RuntimeError(f"no spatial.duckdb_extension under {root}")
    return found[-1]


@dataclass
class BigQueryEmulator:
    home: Path
    data_dir: Path
    staging_dir: Path
    log_path: Path
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "BQEMU_UPLOAD_STAGING_DIR": str(self.staging_dir)}

    def install_extension(self) -> None:
        # DuckDB installs into $HOME/.duckdb/extensions; the emulator's DuckDB then loads it there.
        script = f"import duckdb; duckdb.sql(\"INSTALL '{_spatial_extension_file()}'\")"
        subprocess.run([sys.executable, "-c", script], env=self.env(), check=True, capture_output=True)

    def start(self, timeout: float = 60.0) -> None:
        executable = Path(sys.executable).parent / "bqemulator"
        log = open(self.log_path, "ab")  # noqa: SIM115 -- owned by the child for its lifetime
        self.process = subprocess.Popen(
            [
                str(executable),
                "start",
                "--rest-port",
                str(self.rest_port),
                "--grpc-port",
                str(self.grpc_port),
                "--persistent",
                "--data-dir",
                str(self.data_dir),
                "--project",
                PROJECT,
                "--log-level",
                "warning",
            ],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        url = f"{self.endpoint}/bigquery/v2/projects/{PROJECT}/datasets"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bqemulator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"bqemulator not answering on {url} after {timeout:.0f}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: what a crashed BigQuery endpoint / dropped connection looks like to the client."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self) -> bigquery.Client:
        return bigquery.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )


@pytest.fixture(scope="session")
def bigquery_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BigQueryEmulator]:
    root = tmp_path_factory.mktemp("bqemulator")
    emulator = BigQueryEmulator(
        home=root / "home", data_dir=root / "data", staging_dir=root / "staging", log_path=root / "emulator.log"
    )
    for folder in (emulator.home, emulator.data_dir, emulator.staging_dir):
        folder.mkdir(parents=True)
    emulator.install_extension()
    emulator.start()
    yield emulator
    emulator.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bigquery_client(bigquery_emulator: BigQueryEmulator) -> bigquery.Client:
    return bigquery_emulator.client()


@pytest.fixture
def bigquery_settings(settings, bigquery_emulator: BigQueryEmulator) -> str:
    """Point the ETL at the emulator with a dataset of the test's own; return the dataset name."""
    dataset = f"etl_{uuid.uuid4().hex[:10]}"
    settings.BIGQUERY_PROJECT = PROJECT
    settings.BIGQUERY_DATASET = dataset
    settings.BIGQUERY_API_ENDPOINT = bigquery_emulator.endpoint
    settings.BIGQUERY_REPLACE_MODE = "merge"  # WRITE_TRUNCATE on table$YYYYMMDD is not emulated
    settings.ETL_DESTINATION = "bigquery"
    settings.ETL_BIGQUERY_RETRY_DEADLINE = 3.0
    settings.ETL_BIGQUERY_UPLOAD_RETRIES = 0
    return dataset


@pytest.fixture
def local_archive(settings, tmp_path: Path) -> Path:
    settings.ETL_DESTINATION = "local"
    settings.BIGQUERY_PROJECT = ""
    settings.ETL_LOCAL_DIR = tmp_path / "exports"
    return tmp_path / "exports"


@pytest.fixture
def clickhouse(django_db_setup: None, django_db_blocker) -> Iterator[object]:
    """A clickhouse-driver client on the test database; every table starts empty."""
    with django_db_blocker.unblock():
        client = client_get()
    truncate_all(client)
    yield client
    client.disconnect()


def past_day(offset: int) -> dt.date:
    """A closed day ``offset`` days before yesterday (tests use distinct days)."""
    return dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1 + offset)
