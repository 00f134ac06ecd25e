"""Command line: ``python -m analytics_platform.schema_registry --data-dir DIR``.

SIGTERM and SIGINT stop it: the listening socket closes, requests in flight finish, the log is
closed (every acknowledged change was already fsynced, so ``kill -9`` loses nothing either).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schema_registry", description="Serve a Confluent-compatible schema registry over schemas kept in DIR."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=8081, help="TCP port (Confluent's 8081); 0 picks a free one")
    parser.add_argument("--data-dir", required=True, type=Path, help="where the schema log lives (created if missing)")
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here once listening")
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", type=Path, default=None, help="the certificate's private key (PEM)")
    parser.add_argument("--log-level", default=os.environ.get("SCHEMA_REGISTRY_SERVER_LOG_LEVEL", "INFO"))
    return parser


def main(argv: Sequence[str] | None = None, *, configure_logging: bool = True) -> int:
    """Serve until SIGTERM/SIGINT; return the exit code. Credentials: ``SCHEMA_REGISTRY_SERVER_USER_INFO``."""
    args = build_parser().parse_args(argv)
    if configure_logging:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
        )
    from .server import server_build

    try:
        server = server_build(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            # From the environment only, never argv: a command line is visible to every local user.
            user_info=os.environ.get("SCHEMA_REGISTRY_SERVER_USER_INFO") or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        logger.error("schema registry not started: %s", exc)
        return 2

    def stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file is not None:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(f"{server.server_address[1]}\n")
        tmp.replace(args.port_file)
    logger.info("schema registry listening on %s:%d", *server.server_address[:2])
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        server.api.store.close()
    return 0
