"""A request to stop sending: SIGTERM/SIGINT (PBS at walltime, Ctrl-C) or ``--time-limit``.

No MPI here: the control plane carries a stop to every rank (:mod:`mpiswarm.control`).

No lock: :meth:`StopRequest.request` runs in a signal handler, and a Python signal handler
runs in the main thread between two bytecodes of whatever the main thread was doing — also in
the middle of another call of ``request`` (a second SIGTERM: MPICH's ``mpiexec`` passes each
SIGTERM it gets on to every rank, and at the walltime it gets two, PBS's to the whole job and the
job script's, a few milliseconds apart), of :meth:`~StopRequest.event` or of
:meth:`~StopRequest.detach`. A lock taken there is held by the very thread that waits for it:
the rank hangs for good (the SIGTERM jobs test's flake, issue 16 item 7). Instead each method
works in single assignments and reads, each complete whenever the handler cuts in.
"""
from __future__ import annotations

import asyncio
import signal
import threading
import time


class StopRequest:
    """SIGTERM/SIGINT (PBS at walltime, Ctrl-C) and ``--time-limit`` ask the run to stop
    sending: calls in flight are abandoned, answered rows are written, the job exits
    :data:`EXIT_RESUME`. Works outside and inside the event loop, from a signal handler
    (also one that interrupts another call of this object: see the module docstring)."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.reason: str | None = None
        # (loop, event) while a loop waits for the stop, else None: one attribute, so that a
        # handler never sees a loop without its event
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.request(f"{signal.Signals(signum).name} received")

    def request(self, reason: str) -> None:
        if self.reason is None:  # the first reason stays (two at once: either is right)
            self.reason = reason
        target = self._target
        if target is not None:
            loop, event = target
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: the run is past the point of stopping
                pass

    def event(self) -> asyncio.Event:
        """An event of the running loop that is set on a stop request (or at the deadline)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._target = (loop, event)
        if self.reason is not None:  # asked before the loop ran (after it, request() sets it)
            event.set()
        if self.deadline is not None:
            delay = self.deadline - time.monotonic()
            loop.call_later(max(0.0, delay), self.request, "--time-limit reached")
        return event

    def detach(self) -> None:
        self._target = None
