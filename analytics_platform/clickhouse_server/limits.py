"""What one client may cost the server: connections, time, bytes; and how accept() errors are survived.

Every bound a client can push against lives here or next to the field it bounds (string and
settings bounds in :mod:`.protocol`, block shape bounds in :mod:`.native`), so that a length, a
count or a silence from the network never turns into an unbounded allocation or a thread held
forever. The configurable ones are :class:`ServerLimits`, set by ``cli`` flags or environment
variables (:func:`add_limit_arguments`).

Timeouts, and why these defaults:

* ``handshake_timeout`` (10 s): the TLS handshake and the Hello packet together must arrive within
  it; a deadline, not a per-read timeout, so a client trickling one byte every few seconds is
  dropped as surely as a silent one. Unauthenticated clients can hold a connection slot for no
  longer than this.
* ``idle_timeout`` (600 s): the wait for the next query. ClickHouse's ``idle_connection_timeout``
  is 3600 s; shorter here because an idle connection holds a thread and a chdb session and counts
  against ``max_connections``, and clickhouse-driver pings before reusing a connection and
  reconnects silently when the server has closed it, so clients do not notice.
* ``receive_timeout`` (300 s, ClickHouse's own default): the wait for the next packet while a query
  runs (the blocks of an INSERT, the data a Query packet is followed by).
* ``packet_timeout`` (30 s): the wait for the rest of a packet whose first byte has arrived; a
  client that stops halfway through a packet is stuck or hostile, not thinking.
* ``send_timeout`` (300 s, ClickHouse's ``send_timeout``): how long one write may block on a client
  that does not read its results; the query is then cancelled.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-server bounds; the defaults are the ones documented in the README."""

    max_connections: int = 256
    # 0: none. Behind a proxy or NAT many clients share an address, so it is off unless asked for.
    max_connections_per_ip: int = 0
    handshake_timeout: float = 10.0
    idle_timeout: float = 600.0
    receive_timeout: float = 300.0
    packet_timeout: float = 30.0
    send_timeout: float = 300.0
    # One packet held whole in memory: the query text (INSERT ... FORMAT JSON... carries its rows in
    # it: the stream sink's 50k-row chunks are tens of MB) or one data block on its way to chdb.
    max_packet_bytes: int = 128 << 20


DEFAULT_LIMITS = ServerLimits()

# flag, environment variable, help (the field name is the flag without dashes).
_ARGUMENTS = {
    "max_connections": "open client connections; over it a new one gets TCP_CONNECTION_LIMIT_REACHED",
    "max_connections_per_ip": "open connections from one client address; 0 for no such cap",
    "handshake_timeout": "seconds for the TLS handshake and the Hello packet, together",
    "idle_timeout": "seconds a connection may wait between queries before it is closed",
    "receive_timeout": "seconds to wait for the next packet while a query runs",
    "packet_timeout": "seconds to wait for the rest of a half-received packet",
    "send_timeout": "seconds one write to a client that does not read may block",
    "max_packet_bytes": "bytes of one packet held in memory (query text, one data block)",
}


def _number(kind: type[int] | type[float], *, zero: bool) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-connections`` ... flags, each defaulting to ``$CLICKHOUSE_SERVER_<NAME>``."""
    group = parser.add_argument_group("limits and timeouts")
    for item in fields(ServerLimits):
        env_name = f"CLICKHOUSE_SERVER_{item.name.upper()}"
        default = getattr(DEFAULT_LIMITS, item.name)
        group.add_argument(
            f"--{item.name.replace('_', '-')}",
            dest=item.name,
            type=_number(type(default), zero=item.name == "max_connections_per_ip"),
            # A string default goes through ``type``: a bad environment value is an argparse error.
            default=os.environ.get(env_name, str(default)),
            help=f"{_ARGUMENTS[item.name]} (default: ${env_name} or {default})",
        )


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(**{item.name: getattr(args, item.name) for item in fields(ServerLimits)})


# accept() errors that say nothing about the listening socket. Out of descriptors or buffers: wait
# for some to be freed, as ClickHouse (Poco) and Go's net/http do, instead of spinning or dying.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The pending connection died before it was accepted (accept(2): treat like EAGAIN): retry now.
_CONNECTION_ERRORS = frozenset(
    {
        errno.ECONNABORTED,
        errno.EPROTO,
        errno.EPERM,
        errno.ENETDOWN,
        errno.ENOPROTOOPT,
        errno.EHOSTDOWN,
        errno.ENONET,
        errno.EHOSTUNREACH,
        errno.EOPNOTSUPP,
        errno.ENETUNREACH,
        errno.ECONNRESET,
        errno.ETIMEDOUT,
    }
)


class AcceptBackoff:
    """How long to pause after an accept() error; ``None`` when the error is the listener's own.

    Resource errors back off from 5 ms, doubling up to 1 s (Go's ``net/http.Server.Serve``), and are
    logged once per burst: the first one, then a summary when accept() works again.
    """

    FIRST = 0.005
    MAX = 1.0

    def __init__(self) -> None:
        self._delay = 0.0
        self._failures = 0

    def failed(self, exc: OSError) -> float | None:
        if exc.errno in _CONNECTION_ERRORS:
            logger.debug("accept: %s (retrying)", exc)
            return 0.0
        if exc.errno not in _RESOURCE_ERRORS:
            return None
        if not self._failures:
            logger.warning("accept: %s; pausing accepts until resources are freed", exc)
        self._failures += 1
        self._delay = min(self.MAX, self._delay * 2 if self._delay else self.FIRST)
        return self._delay

    def succeeded(self) -> None:
        if self._failures:
            logger.warning("accepting again after %d failed accept() call(s)", self._failures)
        self._delay = 0.0
        self._failures = 0
