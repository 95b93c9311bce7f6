"""Result records: one row per prompt, held column by column (vLLM ``run_batch`` style:
a failed prompt is a row with ``ok = False`` and its ``error``, never an exception)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import chain

import numpy as np

from .errors import ErrorKind
from .schema import COLUMNS, RESULT_COLUMNS, Column


class ResultColumns:
    """Results for a set of rows, column by column, one attribute a column of
    :data:`mpiswarm.schema.RESULT_COLUMNS` (numeric columns as arrays, string columns as lists;
    ``per="choice"`` columns flattened row-major: entry ``i * n + j`` is choice *j* of row *i*).
    An optional column (``reasoning``) is None until some row has a value."""

    __slots__ = ("n",) + tuple(c.name for c in RESULT_COLUMNS)

    def __init__(self, n: int, **columns):
        self.n = n
        for c in RESULT_COLUMNS:
            if c.name in columns:
                value = columns.pop(c.name)
            elif c.optional:
                value = None
            else:  # (a column its producer does not know of yet: filled)
                value = _filled(c, len(self.index), n)  # (index is the first column)
            setattr(self, c.name, value if c.is_string or value is None else np.asarray(value, c.np_dtype))
        if columns:
            raise TypeError(f"not result columns: {', '.join(sorted(columns))}")

    @classmethod
    def pending(cls, index: np.ndarray, n: int, rank: int) -> "ResultColumns":
        """Rows not answered yet: every column its ``fill`` (``error`` 'not attempted')."""
        index = np.asarray(index, dtype=np.int64)
        columns = {c.name: _filled(c, len(index), n) for c in RESULT_COLUMNS if not c.optional}
        columns["index"], columns["rank"] = index, np.full(len(index), rank, dtype=np.int32)
        return cls(n, **columns)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"ResultColumns({len(self)} rows, n={self.n})"

    def column(self, name: str):
        """Column ``name``; an optional one that no row has, filled (as its readers see it)."""
        value = getattr(self, name)
        return _filled(COLUMNS[name], len(self), self.n) if value is None else value

    def fail(self, rows, message: str, latency_s: float = np.nan, final: bool = True,
             kind: ErrorKind = ErrorKind.OTHER, status: int = -1) -> None:
        """Mark local ``rows`` failed with ``message`` of ``kind`` (HTTP ``status``, -1 none) and
        no answer text. ``final=False`` leaves them to a later attempt (a resume), ``final=True``
        records the failure for good."""
        n = self.n
        rows = list(rows)
        for row in rows:
            self.error[row] = message
            for c in _CHOICE_STRINGS:
                column = getattr(self, c)
                if column is not None:
                    column[row * n:row * n + n] = [""] * n
        self.ok[rows] = False
        self.done[rows] = final
        self.error_kind[rows] = kind
        self.http_status[rows] = status
        self.latency_s[rows] = latency_s

    def set_optional(self, name: str, flat: int, text: str) -> None:
        """Entry ``flat`` (``row * n + j``) of the optional choice column ``name``; the column
        appears on first use."""
        column = getattr(self, name)
        if column is None:
            column = [""] * len(self.completion)
            setattr(self, name, column)
        column[flat] = text

    def set_reasoning(self, flat: int, text: str) -> None:
        """The reasoning of entry ``flat`` (``row * n + j``); the column appears on first use."""
        self.set_optional("reasoning", flat, text)

    def answered(self, rows) -> None:
        """Mark local ``rows`` (a list, or a range: one slice) answered (their texts are already
        in place)."""
        if isinstance(rows, range) and rows.step == 1:
            rows = slice(rows.start, rows.stop)
            self.error[rows] = [""] * (rows.stop - rows.start)
        else:
            rows = list(rows)
            for row in rows:
                self.error[row] = ""
        self.ok[rows] = True
        self.done[rows] = True
        self.error_kind[rows] = ErrorKind.NONE
        self.http_status[rows] = -1

    @classmethod
    def concat(cls, parts: list["ResultColumns"]) -> "ResultColumns":
        """Rows of every part, one after the other (parts share ``n``)."""
        n = parts[0].n
        columns = {}
        for c in RESULT_COLUMNS:
            if c.optional and all(getattr(p, c.name) is None for p in parts):
                continue
            values = [p.column(c.name) for p in parts]
            columns[c.name] = list(chain.from_iterable(values)) if c.is_string else np.concatenate(values)
        return cls(n, **columns)

    def take(self, positions: np.ndarray) -> "ResultColumns":
        """The rows at ``positions`` (an integer array), in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        n = self.n
        flat = (positions[:, None] * n + np.arange(n)).ravel().tolist()
        rows = positions.tolist()
        columns = {}
        for c in RESULT_COLUMNS:
            value = getattr(self, c.name)
            if value is None:
                continue
            if c.is_string:
                columns[c.name] = [value[k] for k in (flat if c.per == "choice" else rows)]
            else:
                columns[c.name] = np.asarray(value)[positions]
        return ResultColumns(n, **columns)

    def in_index_order(self) -> "ResultColumns":
        """The same rows sorted by ``index`` (a no-op when they already are)."""
        if len(self.index) < 2 or bool(np.all(self.index[1:] > self.index[:-1])):
            return self
        return self.take(np.argsort(self.index, kind="stable"))


_CHOICE_STRINGS = tuple(c.name for c in RESULT_COLUMNS if c.is_string and c.per == "choice")


def _filled(column: Column, rows: int, n: int):
    """``rows`` rows of ``column``'s fill value."""
    k = column.entries(rows, n)
    return [column.fill] * k if column.is_string else np.full(k, column.fill, dtype=column.np_dtype)


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
    # chat calls: lists of conversations to /v1/chat/completions/batch, and one-conversation calls
    n_chat_batch_calls: int = 0
    n_chat_calls: int = 0
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
