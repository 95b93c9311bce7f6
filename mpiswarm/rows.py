"""The one type of request rows that move through the pipeline: :class:`RequestRows`.

The input file's rows (:class:`mpiswarm.inputs.PromptSet`, with their custom_ids and digest)
are cut into request rows for each rank (the scatter), for each chunk the control plane hands
out, and for each queue of calls (:class:`mpiswarm.balance.Chunk`: request rows and their
results). Results are :class:`mpiswarm.records.ResultColumns`, one row a request row, columns
from :mod:`mpiswarm.schema`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RequestRows:
    """Rows to send: their global row numbers (input order), prompts as sent, and sampling
    overrides (canonical JSON of the row's own options, '' for none)."""

    index: np.ndarray  # int64
    prompts: list[str]
    overrides: list[str]

    def __post_init__(self):
        self.index = np.asarray(self.index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls) -> "RequestRows":
        return cls(np.zeros(0, np.int64), [], [])

    @classmethod
    def concat(cls, parts: list["RequestRows"]) -> "RequestRows":
        """Rows of every part, one after the other."""
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.index for p in parts]), [s for p in parts for s in p.prompts],
                   [s for p in parts for s in p.overrides])
