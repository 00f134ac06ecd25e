"""A small process supervisor for the local stack: labelled output, restarts, an ordered stop.

Each child's stdout/stderr lines are printed as ``name | line``.

A child started with ``restart=True`` that exits on its own is started again after a backoff
(``Backoff``: 1 s, 2 s, 4 s ... capped at 30 s; back to 1 s once it has run for 30 s), while the
others keep serving. A crash loop is logged at each exit with its count and the next delay, and
never spins. A child started with ``restart=False`` is essential: its exit stops the whole stack
(the broker, whose topics live in its memory only, is the one such child: see
``analytics_platform/devstack/stack.py``).

The stop (Ctrl-C, SIGTERM, or an essential child's exit) runs in phases given by the caller
(``shutdown``): each phase's children get SIGTERM together and SIGKILL after a grace period; a
drain step may run between two phases, during which the children not yet stopped are still
supervised (a stream worker that crashes while draining is restarted). A second Ctrl-C forces: the
drain is abandoned and the remaining children get a short grace only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

_COLOURS = itertools.cycle(["36", "33", "32", "35", "34", "31", "96", "93"])


@dataclass(frozen=True)
class Backoff:
    """Delay before the n-th restart in a row of a child that keeps exiting soon after its start.

    Exponential so that a child failing for a lasting reason (a port taken, a bad setting) costs
    little CPU on a shared 2-core machine; capped so that a fixed cause (the developer freed the
    port) is picked up within ``cap`` seconds; reset by a run of ``stable_seconds``, so that a
    crash after an hour of service restarts at once.
    """

    base: float = 1.0
    cap: float = 30.0
    stable_seconds: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.cap, self.base * 2 ** max(0, failures - 1))


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    restart: bool
    process: subprocess.Popen[bytes]
    started_at: float
    colour: str = field(default_factory=lambda: next(_COLOURS))
    failures: int = 0  # exits in a row, each within Backoff.stable_seconds of its start
    restart_at: float | None = None  # monotonic time of the scheduled restart
    stopped: bool = False  # stopped by the supervisor: never restarted again
    term_at: float | None = None  # monotonic time of the supervisor's SIGTERM

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class Supervisor:
    FORCED_GRACE_SECONDS = 3.0

    def __init__(self, *, width: int = 10, grace_seconds: float = 15.0, backoff: Backoff | None = None) -> None:
        self.children: list[Child] = []
        self.width = width
        self.grace_seconds = grace_seconds
        self.backoff = backoff or Backoff()
        self.failed: Child | None = None  # the essential child whose exit stopped the stack
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._tty = sys.stdout.isatty()

    # Output -------------------------------------------------------------------------------------

    def say(self, name: str, line: str, colour: str = "0") -> None:
        label = f"{name:<{self.width}} |"
        if self._tty:
            label = f"\x1b[{colour}m{label}\x1b[0m"
        with self._lock:
            sys.stdout.write(f"{label} {line}\n")
            sys.stdout.flush()

    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.say(child.name, raw.decode("utf-8", "replace").rstrip("\n"), child.colour)

    # Starting -----------------------------------------------------------------------------------

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, *, restart: bool = True
    ) -> Child:
        """Start ``argv`` as child ``name``; ``restart``: started again when it exits (else fatal)."""
        process = self._spawn(argv, env or {})
        child = Child(name, list(argv), dict(env or {}), restart, process, time.monotonic())
        self.children.append(child)
        self.say("devstack", f"started {name} (pid {process.pid}): {' '.join(argv)}")
        self._attach(child)
        return child

    def _attach(self, child: Child) -> None:
        if child.process.stdout is not None:
            threading.Thread(target=self._pump, args=(child, child.process.stdout), daemon=True).start()

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    # Signals ------------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stopping.is_set():
                if not self._forced.is_set():
                    self._forced.set()
                    # No say() here: it takes the output lock, which the interrupted main thread may hold.
                    os.write(sys.stdout.fileno(), b"devstack   | second interrupt: forcing the stop\n")
                return
            self._stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def forced(self) -> bool:
        return self._forced.is_set()

    # Supervising --------------------------------------------------------------------------------

    def supervise_once(self) -> None:
        """Notice exits, schedule restarts with backoff, run the restarts that are due."""
        now = time.monotonic()
        for child in self.children:
            if child.stopped:
                continue
            if child.restart_at is None and not child.running:
                self._exited(child, now)
            elif child.restart_at is not None and now >= child.restart_at and not self.forced:
                self._signal_group(child, signal.SIGKILL)
                child.process = self._spawn(child.argv, child.env)
                child.started_at, child.restart_at = now, None
                self.say("devstack", f"restarted {child.name} (pid {child.process.pid}, restart {child.failures})")
                self._attach(child)

    def _signal_group(self, child: Child, signum: int) -> None:
        """Signal what is left of a child's process group (it leads a session of its own)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left of it
            os.killpg(child.process.pid, signum)

    def _exited(self, child: Child, now: float) -> None:
        ran = now - child.started_at
        code = child.process.returncode
        # A child killed outright leaves its own children behind: gunicorn's workers keep the
        # listening socket, so a new gunicorn could not bind until they noticed (measured: about
        # 20 s of failed restarts). They get SIGTERM now (an in-flight request is still answered)
        # and SIGKILL before the restart.
        self._signal_group(child, signal.SIGTERM)
        if not child.restart:
            self.say(
                "devstack",
                f"{child.name} exited with {code} after {ran:.1f}s; it cannot be restarted: stopping the stack",
            )
            self.failed = child
            self._stopping.set()
            child.stopped = True
            return
        child.failures = 1 if ran >= self.backoff.stable_seconds else child.failures + 1
        delay = self.backoff.delay(child.failures)
        child.restart_at = now + delay
        loop = f"; crash loop: {child.failures} exits in a row" if child.failures >= 3 else ""
        self.say("devstack", f"{child.name} exited with {code} after {ran:.1f}s; restarting in {delay:g}s{loop}")

    def wait(self, interval: float = 0.2) -> None:
        """Supervise until a stop is requested (signal) or an essential child exits."""
        while not self._stopping.is_set():
            self.supervise_once()
            self._stopping.wait(interval)

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` while supervising; False when a forced stop was requested.

        A drain waits through this, so that a child crashing meanwhile (the stream worker the drain
        waits for, or the ClickHouse server it writes to) is still restarted.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._forced.is_set():
                return False
            self.supervise_once()
            self._forced.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return not self._forced.is_set()

    # Stopping -----------------------------------------------------------------------------------

    def signal_stop(self, names: Sequence[str]) -> None:
        """SIGTERM the named children without waiting (``stop`` waits for them later)."""
        for child in self.children:
            if child.name in names and child.term_at is None:
                child.stopped, child.term_at = True, time.monotonic()
                if child.running:
                    child.process.send_signal(signal.SIGTERM)

    def stop(self, names: Sequence[str]) -> None:
        """SIGTERM the named children together; SIGKILL what is left ``grace_seconds`` after its SIGTERM."""
        self.signal_stop(names)
        children = [c for c in self.children if c.name in names]
        started = time.monotonic()
        for child in children:
            deadline = (child.term_at or started) + self.grace_seconds
            while child.running and time.monotonic() < deadline:
                if self.forced:  # a second Ctrl-C shortens the wait to a few seconds
                    deadline = min(deadline, time.monotonic() + self.FORCED_GRACE_SECONDS)
                time.sleep(0.1)
            if child.running:
                self.say("devstack", f"{child.name} did not stop in time; killing it")
                self._signal_group(child, signal.SIGKILL)
                child.process.wait()
        if children:
            self.say("devstack", f"stopped {', '.join(c.name for c in children)} in {time.monotonic() - started:.1f}s")

    def shutdown(self, phases: Sequence[Sequence[str] | Callable[[], None]], *, early: Sequence[str] = ()) -> None:
        """Stop the stack: each phase is a group of child names or a step (a drain) run in between.

        ``early`` children get SIGTERM at once and are waited for in their phase, so that a slow
        stop (Celery's warm shutdown) runs alongside the steps before it. Children named in no
        phase are stopped first, in reverse start order. A forced stop skips the remaining steps
        but still stops every child.
        """
        named = {name for phase in phases if not callable(phase) for name in phase}
        self.signal_stop(early)
        for child in reversed(self.children):
            if child.name not in named:
                self.stop([child.name])
        for phase in phases:
            if callable(phase):
                if not self.forced:
                    try:
                        phase()
                    except Exception as exc:  # noqa: BLE001 -- whatever a step hits, every child must still stop
                        self.say("devstack", f"stop step failed: {exc!r}; stopping the rest")
            else:
                self.stop(phase)
        self.say("devstack", "stopped")
