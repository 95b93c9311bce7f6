"""Fault injection: which completion calls fail, how, and when an endpoint is unhealthy.

Each decision is a pure function of ``(fault_seed, endpoint index, call number)``
(:func:`draw_fault`), so a run is reproducible call by call whatever the timing.

Per completion call, in order:

1. during ``slow_start`` seconds after the endpoint starts listening → ``starting``
   (answered 503; not counted as a call);
2. once ``crash_after`` calls have been counted → ``crashed`` (connection dropped);
3. otherwise the call is counted, waits its jitter (0..``jitter`` s), and with
   probability ``error_rate`` fails with a kind drawn uniformly from ``error_kinds``: an HTTP
   error, a call never answered, a dropped connection, or a bad reply — a 200 that does not
   answer every prompt (:data:`BAD_REPLY_KINDS`, :func:`spoil_reply`).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .model import BAD_REPLY_KINDS, FAULT_KINDS, SimConfig

__all__ = ["BAD_REPLY_KINDS", "CRASHED", "FAULT_KINDS", "STARTING", "FaultAction", "FaultPolicy", "draw_fault",
           "spoil_reply"]

STARTING = "starting"
CRASHED = "crashed"

_TWO_64 = float(1 << 64)


@dataclass(frozen=True)
class FaultAction:
    """What to do with one call: ``kind`` None (serve it), a FAULT_KINDS entry,
    ``"starting"`` or ``"crashed"``; ``delay`` is the jitter to wait first (seconds)."""

    kind: str | None = None
    delay: float = 0.0


def draw_fault(
    seed: int, endpoint: int, call: int, error_rate: float, kinds: Sequence[str], jitter: float
) -> FaultAction:
    """The fault (or none) and jitter of call number ``call`` (1-based) on ``endpoint``."""
    digest = hashlib.blake2b(b"%d:%d:%d" % (seed, endpoint, call), digest_size=24).digest()
    u_error, u_kind, u_jitter = (
        int.from_bytes(digest[i : i + 8], "little") / _TWO_64 for i in (0, 8, 16)
    )
    kind = kinds[int(u_kind * len(kinds))] if u_error < error_rate else None
    return FaultAction(kind, u_jitter * jitter)


class FaultPolicy:
    """The fault state of one endpoint: slow start, crash and per-call faults."""

    def __init__(self, config: SimConfig, endpoint: int,
                 clock: Callable[[], float] = time.monotonic):
        active = config.faults_apply_to(endpoint)
        self.endpoint = endpoint
        self.seed = config.fault_seed
        self.error_rate = config.error_rate if active else 0.0
        self.kinds = config.error_kinds
        self.jitter = config.jitter if active else 0.0
        self.crash_after = config.crash_after if active else None
        self.slow_start = config.slow_start if active else 0.0
        self.calls = 0
        self._clock = clock
        self._ready_at: float | None = None

    def start(self) -> None:
        """Mark the endpoint as listening: the slow-start window begins now."""
        self._ready_at = self._clock() + self.slow_start

    @property
    def starting(self) -> bool:
        """True before :meth:`start` and during the slow-start window."""
        return self._ready_at is None or self._clock() < self._ready_at

    @property
    def crashed(self) -> bool:
        """True once ``crash_after`` calls have been counted."""
        return self.crash_after is not None and self.calls >= self.crash_after

    @property
    def healthy(self) -> bool:
        """What ``/health`` reports."""
        return not self.starting and not self.crashed

    def on_call(self) -> FaultAction:
        """Decide the fate of the next completion call (counting it if it gets through)."""
        if self.starting:
            return FaultAction(STARTING)
        if self.crashed:
            return FaultAction(CRASHED)
        self.calls += 1
        if not self.error_rate and not self.jitter:
            return FaultAction()
        return draw_fault(self.seed, self.endpoint, self.calls, self.error_rate,
                          self.kinds, self.jitter)


def spoil_reply(payload: dict, kind: str) -> dict:
    """A completion reply that fails to answer its first choice's prompt as ``kind`` says
    (one of :data:`~mpiswarm.sim.model.BAD_REPLY_KINDS` about choices)."""
    choices = sorted(payload["choices"], key=lambda c: c["index"])
    first = choices[0]
    if kind == "missing-choice":
        choices = choices[1:]
    elif kind == "dup-choice":
        choices = choices + [{**(choices[1] if len(choices) > 1 else first), "index": first["index"]}]
    elif kind == "bad-index":
        first["index"] = len(choices) + 7
    elif kind == "no-text":
        first.pop("text" if "text" in first else "message", None)  # completions / chat
    return {**payload, "choices": choices}
