"""Call sizing and load balancing (pure, no MPI), all in one place: the dynamic schedule's
initial share, the chunks rank 0 hands out (a guided share, capped by each rank's rate), the
rows a call carries, and a rank's queue.

Chunks handed out by rank 0 follow guided self-scheduling: each is a share of what is left
(``remaining / (factor * ranks)``), so early chunks are large (few messages) and the last ones
small (no long tail). A rank splits its queued rows into calls sized to keep its engine full
(about ``1.5 * max_num_seqs`` prompts in flight) without flooding its waiting queue, and into even
shares of what is left at the end of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


import numpy as np

from .partition import CallPlan, plan_calls
from .records import ResultColumns
from .rows import RequestRows


def guided_size(remaining: int, n_ranks: int, factor: float = 2.0, minimum: int = 1) -> int:
    """Rows in the next chunk: a ``1 / (factor * n_ranks)`` share of ``remaining``."""
    if remaining <= 0:
        return 0
    return min(remaining, max(minimum, math.ceil(remaining / (factor * n_ranks))))


#: the dynamic schedule scatters 1/INITIAL_SHARE_FACTOR of the rows at once, the rest on request
INITIAL_SHARE_FACTOR = 8
SLOW_CALLS = 2.0  # a rank's calls count as slow at this multiple of the quickest rank's


def initial_share(n_todo: int, n_ranks: int, limit: int) -> int:
    """Rows each rank gets in the first scatter of the dynamic schedule: what keeps its engine
    full (``limit``: a rank would fetch that much before any rate is known anyway), or an 8th
    of its even share if that is more."""
    return max(limit, guided_size(n_todo, n_ranks, factor=INITIAL_SHARE_FACTOR))


def chunk_size(rank: int, remaining: int, outstanding: np.ndarray, rates: np.ndarray, active: np.ndarray,
               latency: np.ndarray | None, *, minimum: int, limit: int, waited_long: bool = False) -> tuple[int, bool]:
    """``(rows, held back)``: rows for ``rank``'s next chunk of the ``remaining`` ones (0: ask
    again later), and whether its rate held it back (rather than its ``limit``).

    A guided share, never more than ``limit`` unfinished rows a rank (``outstanding``: each
    rank's), and — once every ``active`` rank has shown a rate (rows a second) — only if the
    rank, at its rate and with its calls' ``latency``, finishes them before all ranks together
    finish everything left, or if it is the fastest active rank. A rank that has waited long
    (``waited_long``) gets its share anyway: the job never stalls.
    """
    k = min(guided_size(remaining, len(outstanding), minimum=minimum), limit - outstanding[rank])
    if k < min(minimum, remaining):
        return 0, False
    if rates[rank] > 0 and (rates[active] > 0).all() and not waited_long:
        time_left = (remaining + outstanding.sum()) / rates[active].sum()
        fits = int(rates[rank] * time_left - outstanding[rank])
        if latency is not None and latency[active].min() > 0:
            # A call costs its latency however small it is: a rank whose calls take much
            # longer than the others' gets nothing it could not finish by the projected end.
            if latency[rank] > max(time_left, SLOW_CALLS * latency[active].min()):
                fits = 0
        # The fastest active rank always qualifies (so the job never stalls); a slower one
        # only for what it finishes in time: a small chunk still costs a slow engine its latency.
        if fits < min(minimum, remaining) and rates[rank] < rates[active].max():
            return 0, True
        k = max(min(k, fits), min(minimum, remaining)) if fits < k else k
    return int(k), False


#: prompts vLLM accepts in one /v1/completions list: its VLLM_MAX_COMPLETION_PROMPTS default
#: (vLLM 0.32.0, vllm/envs.py; enforced by CompletionRequest.validate_prompt_list_length)
DEFAULT_MAX_PROMPTS_PER_CALL = 1024
IN_FLIGHT_PER_SEQ = 1.5  # prompts in flight per engine slot: full, with a short waiting queue


def call_cap(max_num_seqs: int, concurrency: int) -> int:
    """Prompts per call so that ``concurrency`` calls keep the engine full: about
    ``IN_FLIGHT_PER_SEQ * max_num_seqs`` in flight, never a waiting queue that explodes."""
    return max(1, math.ceil(IN_FLIGHT_PER_SEQ * max_num_seqs / concurrency))


@dataclass
class Chunk(RequestRows):
    """Request rows a rank holds and where their answers go (one result row a request row)."""

    results: ResultColumns | None = None

    @classmethod
    def new(cls, index, prompts, overrides, n: int, rank: int) -> "Chunk":
        return cls(index, prompts, overrides, ResultColumns.pending(index, n, rank))

    @classmethod
    def of(cls, rows: RequestRows, n: int, rank: int) -> "Chunk":
        return cls.new(rows.index, rows.prompts, rows.overrides, n, rank)


class RowQueue:
    """A rank's rows not yet sent, chunk after chunk, taken in calls of rows that share their
    sampling overrides."""

    def __init__(self):
        self._plans: list[tuple[Chunk, CallPlan]] = []
        self._head = 0  # rows of the first plan already taken
        self.queued = 0

    def add(self, chunk: Chunk) -> None:
        for plan in plan_calls(chunk.overrides):
            self._plans.append((chunk, plan))
        self.queued += len(chunk.index)

    def take(self, k: int) -> tuple[Chunk, CallPlan] | None:
        """Up to ``k`` rows of the oldest plan (fewer at the end of a group); None when empty."""
        if not self._plans:
            return None
        chunk, plan = self._plans[0]
        rows = plan.rows[self._head : self._head + k]
        self._head += len(rows)
        if self._head >= len(plan.rows):
            self._plans.pop(0)
            self._head = 0
        self.queued -= len(rows)
        return chunk, CallPlan(rows, plan.overrides)


def next_call_size(queued: int, *, batch_size: int | None, concurrency: int, cap: int | None, final: bool,
                   limit: int | None = None) -> int:
    """Rows for the next call from a queue of ``queued`` rows, never more than ``limit`` (the
    prompts an endpoint accepts in one list, ``--max-prompts-per-call``).

    ``cap`` None is the static schedule: the whole queue in one call unless ``batch_size`` says
    otherwise. With a cap (dynamic), calls carry at most ``cap`` rows, and once no more work can
    arrive (``final``) the rest is shared evenly among the ``concurrency`` calls in flight.
    """
    size = _call_size(queued, batch_size, concurrency, cap, final)
    return size if limit is None else min(size, limit)


def _call_size(queued: int, batch_size: int | None, concurrency: int, cap: int | None, final: bool) -> int:
    if batch_size:
        return batch_size
    if cap is None:
        return max(1, queued)
    if final:  # shrink towards even shares, but not into calls that each pay a latency for a few rows
        return max(1, min(cap, max(math.ceil(queued / concurrency), cap // 4)))
    return cap
