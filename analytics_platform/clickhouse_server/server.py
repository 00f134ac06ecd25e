"""The listening socket and the session threads.

One thread per client connection: chdb calls release the GIL, so queries of different clients run
in parallel inside chdb while Python only shuffles bytes. A long-lived "primary" chdb connection
stays open for the server's lifetime so the engine (and its loaded tables) is not torn down and
rebuilt whenever the last client disconnects, and it is closed last on shutdown.

The accept loop never blocks on a client and never dies of one: over ``max_connections`` a new
connection is told TCP_CONNECTION_LIMIT_REACHED (by a small bounded pool of refusal threads, or
closed at once when those are busy too), and accept() errors are survived (:class:`.AcceptBackoff`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import ssl
import threading
import time
from pathlib import Path

from .engine import (
    EngineConnection,
    access_config_write,
    default_database_detach_filesystem,
    engine_identity,
    engine_names,
    table_function_names,
)
from .limits import DEFAULT_LIMITS, AcceptBackoff, ServerLimits
from .protocol import ErrorCode, ServerError, exception_packet
from .session import Session, SessionConfig
from .sql import StatementGate

# Connections over the cap being told so at once; past that they are closed without a word.
_MAX_REFUSING = 32
_REFUSAL_WAIT = 1.0  # seconds a refused client gets to read the refusal and hang up

logger = logging.getLogger(__name__)


class ClickHouseServer:
    """Serve chdb on ``host:port`` until :meth:`request_stop` is called (e.g. from a signal)."""

    def __init__(
        self,
        *,
        data_dir: str,
        host: str = "127.0.0.1",
        port: int = 9000,
        user: str | None = None,
        password: str | None = None,
        shutdown_grace: float = 5.0,
        limits: ServerLimits = DEFAULT_LIMITS,
        tls: ssl.SSLContext | None = None,
        encrypted: bool = False,
        part_log: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.limits = limits
        self.shutdown_grace = shutdown_grace
        spool_dir = Path(data_dir) / "insert_spool"
        shutil.rmtree(spool_dir, ignore_errors=True)  # leftovers of a killed server
        # Before the first connection: chdb reads it once.
        engine_config = access_config_write(data_dir, encrypted=encrypted, part_log=part_log)
        self._primary = EngineConnection(data_dir, engine_config)
        default_database_detach_filesystem(self._primary, data_dir)  # before any session connects
        timezone, version = engine_identity(self._primary)
        self._config = SessionConfig(
            data_dir=data_dir,
            spool_dir=spool_dir,
            timezone=timezone,
            version=version,
            display_name=socket.gethostname(),
            user=user,
            password=password,
            gate=StatementGate(table_function_names(self._primary), engine_names(self._primary)),
            engine_config=engine_config,
            limits=limits,
            tls=tls,
        )
        # ClickHouse's listen_backlog: a burst of connects waits in the kernel instead of retrying SYNs.
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=4096)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._sessions: dict[Session, threading.Thread] = {}
        self._sessions_lock = threading.Lock()
        self._refusing = threading.BoundedSemaphore(_MAX_REFUSING)
        self._refused = 0  # connections refused in the current burst over the cap
        self._per_host: dict[str, int] = {}  # open sessions per client address

    def request_stop(self) -> None:
        """Safe to call from a signal handler: only sets a flag the accept loop polls."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Accept clients until asked to stop, then shut down gracefully."""
        logger.info("clickhouse server listening on %s:%s (data dir %s)", *self.address, self.data_dir)
        backoff = AcceptBackoff()
        try:
            while not self._stop.is_set():
                try:
                    sock, peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError as exc:
                    if self._stop.is_set():
                        break
                    delay = backoff.failed(exc)
                    if delay is None:
                        raise
                    self._stop.wait(delay)
                    continue
                backoff.succeeded()
                self._admit(sock, peer[0], f"{peer[0]}:{peer[1]}")
        finally:
            self._shutdown()

    def _admit(self, sock: socket.socket, host: str, peer: str) -> None:
        limits = self.limits
        with self._sessions_lock:
            if len(self._sessions) >= limits.max_connections:
                reason = f"The server has reached its limit of {limits.max_connections} connections"
            elif limits.max_connections_per_ip and self._per_host.get(host, 0) >= limits.max_connections_per_ip:
                reason = f"{host} has reached its limit of {limits.max_connections_per_ip} connections"
            else:
                reason = ""
                self._per_host[host] = self._per_host.get(host, 0) + 1
        if not reason:
            if self._refused:
                logger.warning("connection limit: %d connection(s) refused, accepting again", self._refused)
                self._refused = 0
            self._start_session(sock, host, peer)
            return
        if not self._refused:
            logger.warning("connection limit reached, refusing new connections: %s", reason)
        self._refused += 1
        if not self._refusing.acquire(blocking=False):
            sock.close()
            return
        try:
            threading.Thread(
                target=self._refuse, args=(sock, peer, reason), name=f"ch-refuse-{peer}", daemon=True
            ).start()
        except RuntimeError:  # no thread to be had: close without a word
            self._refusing.release()
            sock.close()

    def _refuse(self, sock: socket.socket, peer: str, reason: str) -> None:
        """Send the refusal as an Exception packet, which clickhouse-driver raises as ServerException.

        It goes before the client's Hello is read (the driver reads it in place of the server's
        Hello); the Hello is then drained until the client closes, because closing with unread
        bytes would reset the connection and could destroy the refusal before it is read.
        """
        error = ServerError.make(ErrorCode.TCP_CONNECTION_LIMIT_REACHED, reason)
        deadline = time.monotonic() + _REFUSAL_WAIT
        try:
            sock.settimeout(_REFUSAL_WAIT)
            if self._config.tls is not None:
                sock = self._config.tls.wrap_socket(sock, server_side=True)
            sock.sendall(exception_packet(error))
            sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(65536):
                    break
        except OSError as exc:  # includes timeouts and TLS errors: the refusal is best effort
            logger.debug("refusing %s: %s", peer, exc)
        finally:
            sock.close()
            self._refusing.release()

    def _start_session(self, sock: socket.socket, host: str, peer: str) -> None:
        """Serve ``sock`` on a new thread; ``host`` was already counted by :meth:`_admit`."""
        with contextlib.suppress(OSError):  # the peer may already be gone
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(sock, peer, self._config)
        thread = threading.Thread(target=self._run_session, args=(session, host), name=f"ch-{peer}", daemon=True)
        with self._sessions_lock:
            self._sessions[session] = thread
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": out of memory or a tasks limit
            logger.warning("dropping connection from %s: %s", peer, exc)
            self._forget(session, host)
            sock.close()

    def _run_session(self, session: Session, host: str) -> None:
        try:
            session.run()
        finally:
            self._forget(session, host)

    def _forget(self, session: Session, host: str) -> None:
        with self._sessions_lock:
            self._sessions.pop(session, None)
            left = self._per_host.pop(host, 1) - 1
            if left:
                self._per_host[host] = left

    def _shutdown(self) -> None:
        """Stop accepting, let running queries finish for ``shutdown_grace`` s, then abort them."""
        self._listener.close()
        with self._sessions_lock:
            sessions = dict(self._sessions)
        logger.info("shutting down: %d open session(s)", len(sessions))
        for session in sessions:
            session.close_when_idle()
        deadline = time.monotonic() + self.shutdown_grace
        for thread in sessions.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        for session, thread in sessions.items():
            if thread.is_alive():
                logger.warning("aborting session %s still running after %.1fs", session.peer, self.shutdown_grace)
                session.abort()
        for thread in sessions.values():
            thread.join(2.0)
        self._primary.close()
        logger.info("clickhouse server stopped")

    @property
    def sessions_alive(self) -> int:
        with self._sessions_lock:
            return len(self._sessions)
