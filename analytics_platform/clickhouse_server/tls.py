"""TLS on the native port (ClickHouse's ``tcp_port_secure``), for clients that set ``secure=True``.

The listener stays a plain TCP socket: each accepted socket is wrapped and its handshake done in
the session's own thread under the handshake deadline (:mod:`.limits`), so a client that opens a
connection and sends half a ClientHello holds one connection slot for at most that long and never
blocks the accept loop.
"""

from __future__ import annotations

import argparse
import os
import ssl


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS")
    group.add_argument(
        "--tls-cert",
        default=os.environ.get("CLICKHOUSE_SERVER_TLS_CERT") or None,
        help="PEM certificate chain; with --tls-key: TLS 1.2+ only (default: $CLICKHOUSE_SERVER_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=os.environ.get("CLICKHOUSE_SERVER_TLS_KEY") or None,
        help="PEM private key of --tls-cert (default: $CLICKHOUSE_SERVER_TLS_KEY)",
    )


def server_context_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain TCP; bad files are an argparse error (exit 2)."""
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        return server_context(certfile=args.tls_cert, keyfile=args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"cannot load the TLS certificate/key: {exc}")


def server_context(*, certfile: str, keyfile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    return context
