"""Load balancing (pure, no MPI): how much work a chunk or a call carries, and a rank's queue.

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


def guided_size(remaining: int, n_ranks: int, factor: float = 2.0, minimum: int = 1) -> int:
    """Rows in the next chunk: a ``1 / (factor * n_ranks)`` share of ``remaining``."""
    if remaining <= 0:
        return 0
    return min(remaining, max(minimum, math.ceil(remaining / (factor * n_ranks))))


#: prompts vLLM accepts in one /v1/completions list: its VLLM_MAX_COMPLETION_PROMPTS default
#: (vLLM 0.32.0, vllm/envs.py; enforced by CompletionRequest.validate_prompt_list_length)
DEFAULT_MAX_PROMPTS_PER_CALL = 1024
IN_FLIGHT_PER_SEQ = 1.5  # prompts in flight per engine slot: full, with a short waiting queue


def call_cap(max_num_seqs: int, concurrency: int) -> int:
    """Prompts per call so that ``concurrency`` calls keep the engine full: about
    ``IN_FLIGHT_PER_SEQ * max_num_seqs`` in flight, never a waiting queue that explodes."""
    return max(1, math.ceil(IN_FLIGHT_PER_SEQ * max_num_seqs / concurrency))


@dataclass
class Chunk:
    """Rows a rank holds: their global index, prompts, overrides, and where answers go."""

    index: np.ndarray
    prompts: list[str]
    overrides: list[str]
    results: ResultColumns

    @classmethod
    def new(cls, index, prompts, overrides, n: int, rank: int) -> "Chunk":
        return cls(np.asarray(index, dtype=np.int64), prompts, overrides, ResultColumns.pending(index, n, rank))


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
