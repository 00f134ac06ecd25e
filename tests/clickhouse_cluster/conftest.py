"""A real ZooKeeper (Debian's ``zookeeper``) on a free port, and chdb configured against it.

chdb refuses ``ON CLUSTER`` (distributed DDL), so cluster statements run without it, on one node
whose config has ``<zookeeper>``, the ``{shard}``/``{replica}`` macros and a two-shard
``remote_servers`` entry for the cluster: Replicated engines then register in ZooKeeper and check
their arguments, keys and version columns; Distributed tables check their cluster and sharding key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analytics_platform.devstack.processes import free_port

ZK_SERVER = Path("/usr/share/zookeeper/bin/zkServer.sh")
ZK_CLI = ZK_SERVER.with_name("zkCli.sh")
CLUSTER = "analytics"
SHARD = "01"
REPLICA = "r1"
_RUNNER = Path(__file__).with_name("chdb_run.py")


@dataclass(frozen=True)
class ZooKeeper:
    host: str
    port: int


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"zookeeper exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"zookeeper did not listen on {host}:{port}")


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeper]:
    if not ZK_SERVER.exists():
        pytest.fail("Debian's zookeeper is not installed: make zookeeper (apt-get install zookeeper)")
    root = tmp_path_factory.mktemp("zookeeper")
    port = free_port()
    config = root / "zoo.cfg"
    config.write_text(
        f"tickTime=2000\ndataDir={root / 'data'}\nclientPort={port}\nclientPortAddress=127.0.0.1\n"
        "admin.enableServer=false\n"
    )
    log = (root / "zookeeper.log").open("wb")
    env = dict(os.environ, ZOO_LOG_DIR=str(root))
    proc = subprocess.Popen(
        [str(ZK_SERVER), "start-foreground", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        _wait_port("127.0.0.1", port, proc, timeout=60)
        yield ZooKeeper("127.0.0.1", port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def chdb_config(path: Path, zk: ZooKeeper) -> Path:
    # The shards' hosts are never reached: creating a Distributed table only resolves the cluster.
    shards = "".join(f"<shard><replica><host>127.0.0.1</host><port>{port}</port></replica></shard>" for port in (1, 2))
    path.write_text(
        "<clickhouse>"
        f"<zookeeper><node><host>{zk.host}</host><port>{zk.port}</port></node></zookeeper>"
        f"<macros><shard>{SHARD}</shard><replica>{REPLICA}</replica></macros>"
        f"<remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>"
        "</clickhouse>"
    )
    return path


def chdb_run(db_dir: Path, config: Path, statements: list[str]) -> list[dict[str, Any]]:
    """Run ``statements`` in order in a fresh chdb process; one result per statement."""
    done = subprocess.run(
        [sys.executable, str(_RUNNER), str(db_dir), str(config)],
        input=json.dumps(statements).encode(),
        capture_output=True,
        timeout=240,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"chdb runner failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    results: list[dict[str, Any]] = json.loads(done.stdout)
    assert len(results) == len(statements)
    return results


def zk_ls(zk: ZooKeeper, path: str) -> list[str]:
    """The children of ``path`` in ZooKeeper, through its own CLI (``ls``)."""
    done = subprocess.run(
        [str(ZK_CLI), "-server", f"{zk.host}:{zk.port}", "ls", path],
        capture_output=True,
        timeout=60,
        check=True,
    )
    listing = [line for line in done.stdout.decode().splitlines() if line.startswith("[")]
    assert listing, done.stdout.decode()[-2000:]
    return [name.strip() for name in listing[-1].strip("[]").split(",") if name.strip()]
