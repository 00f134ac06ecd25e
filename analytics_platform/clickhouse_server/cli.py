"""Command line: ``python -m analytics_platform.clickhouse_server --data-dir DIR``.

SIGTERM and SIGINT ask the server to stop: it closes the listening socket, lets running queries
finish for ``--shutdown-grace`` seconds, aborts the rest, closes chdb and exits 0.

A password is required, on loopback too: any local process or user could otherwise read and drop
every table (and, before the statement gate, read the server's files). Give it in
``$CLICKHOUSE_SERVER_PASSWORD`` rather than ``--password``, which other local users see in
``ps``. ``--insecure-no-password`` lets any client in, and only on a loopback address.
``$CLICKHOUSE_SERVER_ENCRYPTION_KEY`` (64 hex digits) encrypts a new data dir at rest
(``encryption.py``); only the environment carries it, for the same reason.
``$CLICKHOUSE_SERVER_PART_LOG=1`` keeps ``system.part_log`` (what the stream benchmark reads).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .encryption import KEY_ENV, EncryptionError, data_dir_prepare, key_check
from .limits import add_limit_arguments, limits_from_args
from .tls import add_tls_arguments, server_context_from_args

logger = logging.getLogger(__name__)

#: ``1`` keeps ``system.part_log`` (engine.access_config_write): per-table insert and merge cost.
PART_LOG_ENV = "CLICKHOUSE_SERVER_PART_LOG"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickhouse_server",
        description="Serve the embedded ClickHouse engine (chdb) over the ClickHouse native TCP protocol.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=9000, help="TCP port; 0 picks a free one (see --port-file)")
    parser.add_argument("--data-dir", required=True, type=Path, help="chdb data directory (created if missing)")
    parser.add_argument("--user", default=None, help="required user name (default: any, or 'default' with --password)")
    parser.add_argument(
        "--password",
        default=os.environ.get("CLICKHOUSE_SERVER_PASSWORD"),
        help="required password (default: $CLICKHOUSE_SERVER_PASSWORD, preferred: argv shows in ps)",
    )
    parser.add_argument(
        "--insecure-no-password",
        action="store_true",
        help="accept clients without a password (loopback addresses only; throwaway local use)",
    )
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    parser.add_argument("--shutdown-grace", type=float, default=5.0, help="seconds running queries get on shutdown")
    parser.add_argument("--log-level", default=os.environ.get("CLICKHOUSE_SERVER_LOG_LEVEL", "INFO"))
    # Connection limits, timeouts and TLS (limits.py, tls.py).
    add_limit_arguments(parser)
    add_tls_arguments(parser)
    return parser


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def main(argv: Sequence[str] | None = None, *, configure_logging: bool = True) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit code.

    ``configure_logging=False`` leaves logging to the caller (the Django management command).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if configure_logging:
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
    if args.insecure_no_password and args.password:
        parser.error("--insecure-no-password contradicts the password given")
    if not args.password and not _loopback(args.host):
        # Reachable from other machines: a server that lets anyone in would hand them the data.
        parser.error(f"--host {args.host} is not loopback: a password is required ($CLICKHOUSE_SERVER_PASSWORD)")
    if not args.password and not args.insecure_no_password:
        parser.error(
            "a password is required: set $CLICKHOUSE_SERVER_PASSWORD"
            " (or pass --insecure-no-password to let any local client in)"
        )
    tls = server_context_from_args(parser, args)
    try:
        # The key only from the environment (argv shows in ps); chdb reads it there too.
        key = key_check(os.environ.get(KEY_ENV))
        args.data_dir.mkdir(parents=True, exist_ok=True)
        encrypted = data_dir_prepare(args.data_dir, key=key)
    except EncryptionError as exc:
        parser.error(str(exc))

    from .server import ClickHouseServer  # imports chdb: slow, so after argument errors

    server = ClickHouseServer(
        data_dir=str(args.data_dir.resolve()),
        host=args.host,
        port=args.port,
        user=args.user,
        password=args.password,
        shutdown_grace=args.shutdown_grace,
        limits=limits_from_args(args),
        tls=tls,
        encrypted=encrypted,
        # Diagnostics for benchmarks (bench/bench_streams.py), never needed to serve.
        part_log=os.environ.get(PART_LOG_ENV, "") == "1",
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{server.address[1]}\n")
        tmp.replace(args.port_file)  # atomic: a reader never sees a half-written file
    server.serve_forever()
    if server.sessions_alive:
        # A session is stuck inside chdb; exiting now is as safe as kill -9 (parts are atomic).
        logging.shutdown()
        os._exit(0)
    return 0
