"""A small process supervisor for the local stack: labelled, interleaved output; clean stop.

Each child's stdout/stderr lines are printed as ``name | line``. When any child exits, or on
Ctrl-C / SIGTERM, every child gets SIGTERM (in reverse start order) and then SIGKILL after a grace
period, so nothing is left running and the data on disk is closed cleanly.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

_COLOURS = itertools.cycle(["36", "33", "32", "35", "34", "31", "96", "93"])


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    colour: str = field(default_factory=lambda: next(_COLOURS))


class Supervisor:
    def __init__(self, *, width: int = 10, grace_seconds: float = 15.0) -> None:
        self.children: list[Child] = []
        self.width = width
        self.grace_seconds = grace_seconds
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tty = sys.stdout.isatty()

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

    def attach(self, name: str, process: subprocess.Popen[bytes]) -> Child:
        child = Child(name, process)
        self.children.append(child)
        if process.stdout is not None:
            threading.Thread(target=self._pump, args=(child, process.stdout), daemon=True).start()
        return child

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Child:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
        )
        self.say("devstack", f"started {name} (pid {process.pid}): {' '.join(argv)}")
        return self.attach(name, process)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def wait(self) -> int:
        """Block until a child exits or a stop is requested; then stop everything."""
        failed: Child | None = None
        while not self._stopping.is_set() and failed is None:
            for child in self.children:
                if child.process.poll() is not None:
                    failed = child
                    break
            self._stopping.wait(0.5)
        if failed is not None:
            self.say("devstack", f"{failed.name} exited with {failed.process.returncode}; stopping the stack")
        self.stop_all()
        return 0 if failed is None else 1

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_seconds
            while child.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if child.process.poll() is None:
                self.say("devstack", f"{child.name} did not stop in {self.grace_seconds:.0f}s; killing it")
                child.process.kill()
                child.process.wait()
        self.say("devstack", "stopped")
