"""The listening socket and the session threads.

One thread per client connection: chdb calls release the GIL, so queries of different clients run
in parallel inside chdb while Python only shuffles bytes. A long-lived "primary" chdb connection
stays open for the server's lifetime so the engine (and its loaded tables) is not torn down and
rebuilt whenever the last client disconnects, and it is closed last on shutdown.
"""

from __future__ import annotations

import logging
import shutil
import socket
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
from .session import Session, SessionConfig
from .sql import StatementGate

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
    ) -> None:
        self.data_dir = data_dir
        self.shutdown_grace = shutdown_grace
        spool_dir = Path(data_dir) / "insert_spool"
        shutil.rmtree(spool_dir, ignore_errors=True)  # leftovers of a killed server
        engine_config = access_config_write(data_dir)  # before the first connection: chdb reads it once
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
        )
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self._listener.settimeout(0.2)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._sessions: dict[Session, threading.Thread] = {}
        self._sessions_lock = threading.Lock()

    def request_stop(self) -> None:
        """Safe to call from a signal handler: only sets a flag the accept loop polls."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Accept clients until asked to stop, then shut down gracefully."""
        logger.info("clickhouse server listening on %s:%s (data dir %s)", *self.address, self.data_dir)
        try:
            while not self._stop.is_set():
                try:
                    sock, peer = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                self._start_session(sock, f"{peer[0]}:{peer[1]}")
        finally:
            self._shutdown()

    def _start_session(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = Session(sock, peer, self._config)
        thread = threading.Thread(target=self._run_session, args=(session,), name=f"ch-{peer}", daemon=True)
        with self._sessions_lock:
            self._sessions[session] = thread
        thread.start()

    def _run_session(self, session: Session) -> None:
        try:
            session.run()
        finally:
            with self._sessions_lock:
                self._sessions.pop(session, None)

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
