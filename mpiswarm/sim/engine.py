"""The continuous-batching engine of one simulated endpoint.

:class:`Engine` schedules every request's sequences (:class:`_Seq`, grouped by request in a
:class:`_Group`) in steps timed by :mod:`mpiswarm.sim.model`'s time model, and counts tokens
and latencies into the endpoint's :class:`~mpiswarm.sim.metrics.Metrics`; requests unfinished
at shutdown fail with :class:`EngineStopped`.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Sequence

from .metrics import Metrics
from .model import SimConfig, decode_step_seconds, prefill_seconds

log = logging.getLogger("mpiswarm.sim")

MIN_TICK_S = 0.002  # shorter decode steps are run several per event-loop wake-up
MAX_LAG_S = 0.1  # how far the engine may run behind real time before it stops catching up


class EngineStopped(RuntimeError):
    """The endpoint shut down before the request finished."""


_WAITING, _RUNNING, _DONE, _ABORTED = range(4)


class _Seq:
    """One sequence (a prompt's choice j), the engine's unit of scheduling."""

    __slots__ = ("group", "prompt_tokens", "prefill_tokens", "n_out", "finish_reason",
                 "arrival", "start_step", "state")

    def __init__(self, group, prompt_tokens, prefill_tokens, n_out, finish_reason, arrival):
        self.group = group
        self.prompt_tokens = prompt_tokens
        self.prefill_tokens = prefill_tokens
        self.n_out = n_out
        self.finish_reason = finish_reason
        self.arrival = arrival
        self.start_step = 0
        self.state = _WAITING


class _Group:
    """The sequences of one HTTP request; its future resolves when all are done."""

    __slots__ = ("future", "seqs", "remaining")

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.seqs: list[_Seq] = []
        self.remaining = 0


class Engine:
    """Continuous-batching scheduler of one endpoint, run as a task in its event loop.

    Each step admits waiting sequences while fewer than ``max_num_seqs`` run (their
    prefill adds to that step's time), then every running sequence gains one token; a
    sequence finishes after its own number of tokens. Steps shorter than
    :data:`MIN_TICK_S` are grouped into one wake-up (never past the next finish).
    """

    def __init__(self, config: SimConfig, speed: float, metrics: Metrics):
        self.config = config
        self.speed = speed
        self.metrics = metrics
        self.max_running = 0
        self._waiting: deque[_Seq] = deque()
        self._n_waiting = 0
        self._n_running = 0
        self._heap: list[tuple[int, int, _Seq]] = []  # (finish step, tie-break, seq)
        self._tie = itertools.count()
        self._step = 0
        self._groups: set[_Group] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> int:
        return self._n_running

    @property
    def waiting(self) -> int:
        return self._n_waiting

    def kv_usage(self) -> float:
        """Tokens held by running sequences over ``max_num_seqs * max_model_len``."""
        held = sum(
            seq.prompt_tokens + min(self._step - seq.start_step, seq.n_out)
            for _, _, seq in self._heap
            if seq.state == _RUNNING
        )
        return held / (self.config.max_num_seqs * self.config.max_model_len)

    def start(self) -> None:
        """Start the scheduling task (in the running loop)."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop scheduling and fail every unfinished request with :class:`EngineStopped`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_pending("endpoint shut down")

    def _fail_pending(self, reason: str) -> None:
        for group in self._groups:
            if not group.future.done():
                group.future.set_exception(EngineStopped(reason))
        self._groups.clear()

    async def generate(self, prompt_tokens: Sequence[int], answers: Sequence[tuple],
                       n: int) -> None:
        """Run the sequences of one request: ``answers[i*n + j]`` belongs to prompt ``i``.

        Returns once all are finished; if cancelled (client gone), aborts them.
        """
        if self._task is None or self._task.done():
            raise EngineStopped("endpoint is not running")
        loop = asyncio.get_running_loop()
        group = _Group(loop.create_future())
        now = loop.time()
        for k, (_, finish_reason, n_tokens) in enumerate(answers):
            i, j = divmod(k, n)
            pt = prompt_tokens[i]
            group.seqs.append(_Seq(group, pt, pt if j == 0 else 0, max(1, n_tokens),
                                   finish_reason, now))
        group.remaining = len(group.seqs)
        self._waiting.extend(group.seqs)
        self._n_waiting += len(group.seqs)
        self._groups.add(group)
        self._wake.set()
        try:
            await group.future
        except asyncio.CancelledError:
            self._abort(group)
            raise

    def _abort(self, group: _Group) -> None:
        self._groups.discard(group)
        for seq in group.seqs:
            if seq.state == _WAITING:
                self._n_waiting -= 1
            elif seq.state == _RUNNING:
                self._n_running -= 1
            seq.state = _ABORTED

    async def _run(self) -> None:
        try:
            await self._schedule()
        except Exception:  # a bug: fail loudly rather than leave calls hanging
            log.exception("mpiswarm.sim engine failed; its calls will be dropped")
            self._fail_pending("engine failed")

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()  # simulated time, kept from drifting behind real time
        while True:
            if not self._n_waiting and not self._n_running:
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
            clock = max(clock, loop.time() - MAX_LAG_S)
            prefill = self._admit(clock)
            if not self._n_running:
                continue
            step_s = decode_step_seconds(self._n_running, self.config, self.speed)
            steps = self._steps_this_tick(step_s)
            clock += prefill_seconds(prefill, self.config, self.speed) + steps * step_s
            await asyncio.sleep(max(0.0, clock - loop.time()))
            self._step += steps
            self.metrics.generation_tokens += steps * self._n_running
            self._finish_due(loop.time())

    def _admit(self, now: float) -> int:
        """Move waiting sequences into the batch; returns their prefill tokens."""
        prefill = 0
        limit = self.config.max_num_seqs
        waiting, heap = self._waiting, self._heap
        while waiting and self._n_running < limit:
            seq = waiting.popleft()
            if seq.state != _WAITING:
                continue
            seq.state = _RUNNING
            seq.start_step = self._step
            heapq.heappush(heap, (self._step + seq.n_out, next(self._tie), seq))
            self._n_waiting -= 1
            self._n_running += 1
            prefill += seq.prefill_tokens
            self.metrics.queue_time.observe(max(0.0, now - seq.arrival))  # the engine clock may trail arrivals
        self.metrics.prompt_tokens += prefill
        self.max_running = max(self.max_running, self._n_running)
        return prefill

    def _steps_this_tick(self, step_s: float) -> int:
        if step_s >= MIN_TICK_S:
            return 1
        to_next = max(1, self._heap[0][0] - self._step)
        return to_next if step_s <= 0 else min(to_next, max(1, int(MIN_TICK_S / step_s)))

    def _finish_due(self, now: float) -> None:
        heap, metrics = self._heap, self.metrics
        while heap and heap[0][0] <= self._step:
            seq = heapq.heappop(heap)[2]
            if seq.state != _RUNNING:
                continue
            seq.state = _DONE
            self._n_running -= 1
            metrics.e2e.observe(now - seq.arrival)
            metrics.success[seq.finish_reason] += 1
            group = seq.group
            group.remaining -= 1
            if not group.remaining:
                self._groups.discard(group)
                if not group.future.done():
                    group.future.set_result(None)
