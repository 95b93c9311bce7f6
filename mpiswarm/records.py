"""Result records: one row per prompt, held column by column (vLLM ``run_batch`` style:
a failed prompt is a row with ``ok = False`` and its ``error``, never an exception)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import chain

import numpy as np

#: columns holding strings: ``completion`` and ``finish_reason`` have ``n`` entries a row
STRING_COLUMNS = ("completion", "finish_reason", "error")
#: columns holding numbers, one entry a row
NUMERIC_COLUMNS = ("index", "ok", "done", "rank", "prompt_tokens", "completion_tokens", "latency_s")


@dataclass
class ResultColumns:
    """Results for a set of rows. ``completion``/``finish_reason`` are flattened row-major:
    entry ``i * n + j`` is choice *j* of row *i*."""

    index: np.ndarray  # int64: global row number (input order)
    n: int
    completion: list[str]
    finish_reason: list[str]
    error: list[str]
    ok: np.ndarray  # bool: answered
    done: np.ndarray  # bool: finished for good (answered, or failed in a way a retry cannot fix)
    rank: np.ndarray  # int32: the rank that served the row
    prompt_tokens: np.ndarray  # int64, -1 where unknown
    completion_tokens: np.ndarray  # int64, -1 where unknown
    latency_s: np.ndarray  # float64: duration of the HTTP call that carried the row
    #: a reasoning model's reasoning (chat ``reasoning``/``reasoning_content``), shaped like
    #: ``completion``; None until some row has one, so runs without reasoning carry no column
    reasoning: list[str] | None = None

    @classmethod
    def pending(cls, index: np.ndarray, n: int, rank: int) -> "ResultColumns":
        """Rows not answered yet: ``ok = False`` with the error 'not attempted'."""
        rows = len(index)
        return cls(
            index=np.asarray(index, dtype=np.int64),
            n=n,
            completion=[""] * (rows * n),
            finish_reason=[""] * (rows * n),
            error=["not attempted"] * rows,
            ok=np.zeros(rows, dtype=bool),
            done=np.zeros(rows, dtype=bool),
            rank=np.full(rows, rank, dtype=np.int32),
            prompt_tokens=np.full(rows, -1, dtype=np.int64),
            completion_tokens=np.full(rows, -1, dtype=np.int64),
            latency_s=np.full(rows, np.nan, dtype=np.float64),
        )

    def __len__(self) -> int:
        return len(self.index)

    def fail(self, rows, message: str, latency_s: float = np.nan, final: bool = True) -> None:
        """Mark local ``rows`` failed with ``message`` (and no answer text). ``final=False``
        leaves them to a later attempt (a resume), ``final=True`` records the failure for good."""
        n = self.n
        for row in rows:
            self.ok[row] = False
            self.done[row] = final
            self.error[row] = message
            for flat in range(row * n, row * n + n):
                self.completion[flat] = ""
                self.finish_reason[flat] = ""
            if self.reasoning is not None:
                self.reasoning[row * n : row * n + n] = [""] * n
        self.latency_s[list(rows)] = latency_s

    def set_reasoning(self, flat: int, text: str) -> None:
        """The reasoning of entry ``flat`` (``row * n + j``); the column appears on first use."""
        if self.reasoning is None:
            self.reasoning = [""] * len(self.completion)
        self.reasoning[flat] = text

    def answered(self, rows) -> None:
        """Mark local ``rows`` answered (their texts are already in place)."""
        for row in rows:
            self.ok[row] = True
            self.done[row] = True
            self.error[row] = ""

    @classmethod
    def concat(cls, parts: list["ResultColumns"]) -> "ResultColumns":
        """Rows of every part, one after the other (parts share ``n``)."""
        n = parts[0].n
        reasoning = None
        if any(p.reasoning is not None for p in parts):
            reasoning = list(chain.from_iterable(
                [""] * len(p.completion) if p.reasoning is None else p.reasoning for p in parts))
        return cls(
            n=n,
            **{c: list(chain.from_iterable(getattr(p, c) for p in parts)) for c in STRING_COLUMNS},
            **{c: np.concatenate([getattr(p, c) for p in parts]) for c in NUMERIC_COLUMNS},
            reasoning=reasoning,
        )

    def take(self, positions: np.ndarray) -> "ResultColumns":
        """The rows at ``positions`` (an integer array), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        n = self.n
        flat = (positions[:, None] * n + np.arange(n)).ravel().tolist()
        rows = positions.tolist()
        return ResultColumns(
            n=n,
            completion=[self.completion[k] for k in flat],
            finish_reason=[self.finish_reason[k] for k in flat],
            error=[self.error[k] for k in rows],
            **{c: np.asarray(getattr(self, c))[positions] for c in NUMERIC_COLUMNS},
            reasoning=None if self.reasoning is None else [self.reasoning[k] for k in flat],
        )

    def in_index_order(self) -> "ResultColumns":
        """The same rows sorted by ``index`` (a no-op when they already are)."""
        if len(self.index) < 2 or bool(np.all(self.index[1:] > self.index[:-1])):
            return self
        return self.take(np.argsort(self.index, kind="stable"))


@dataclass
class RankStats:
    """What one rank did, stored per rank in the output file (group ``ranks``)."""

    rank: int
    host: str
    endpoint: str
    n_prompts: int = 0
    n_ok: int = 0
    n_calls: int = 0
    n_failed_calls: int = 0
    n_retries: int = 0
    n_bisections: int = 0
    n_failovers: int = 0
    n_bad_replies: int = 0  # 200s that did not answer every row (missing/bad choices, not JSON, not a completion)
    # the rank's own endpoint: times declared dead (or down at the start) and back in service, and
    # when last (seconds after the request phase began, -1: never); every endpoint's in extra
    n_endpoint_lost: int = 0
    n_endpoint_back: int = 0
    t_endpoint_lost: float = -1.0
    t_endpoint_back: float = -1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_model_len: int = -1
    t_health: float = 0.0
    t_scatter: float = 0.0
    t_requests: float = 0.0
    t_gather: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0  # peak resident memory of the rank's process
    # what the rank's endpoint did during the request phase, from its /metrics (-1: not exported)
    engine_prompt_tokens: float = -1.0
    engine_generation_tokens: float = -1.0
    engine_preemptions: float = -1.0
    engine_requests: float = -1.0
    engine_queue_time_s: float = -1.0
    engine_e2e_latency_s: float = -1.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)
