"""A request to stop sending: SIGTERM/SIGINT (PBS at walltime, Ctrl-C) or ``--time-limit``.

No MPI here: the control plane carries a stop to every rank (:mod:`mpiswarm.control`).
"""
from __future__ import annotations

import asyncio
import signal
import threading
import time


class StopRequest:
    """SIGTERM/SIGINT (PBS at walltime, Ctrl-C) and ``--time-limit`` ask the run to stop
    sending: calls in flight are abandoned, answered rows are written, the job exits
    :data:`EXIT_RESUME`. Works outside and inside the event loop."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.reason: str | None = None
        self._event: asyncio.Event | None = None
        self._loop = None
        self._lock = threading.Lock()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.request(f"{signal.Signals(signum).name} received")

    def request(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._event.set)

    def event(self) -> asyncio.Event:
        """An event of the running loop that is set on a stop request (or at the deadline)."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            if self.reason is not None:
                self._event.set()
        if self.deadline is not None:
            delay = self.deadline - time.monotonic()
            self._loop.call_later(max(0.0, delay), self.request, "--time-limit reached")
        return self._event

    def detach(self) -> None:
        with self._lock:
            self._loop = self._event = None
