"""Rank 0's prompts to every rank: contiguous slices, strings as one UTF-8 buffer plus lengths."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _mpi
from .inputs import PromptSet
from .partition import contiguous_bounds
from .wire import pack_string_slices, unpack_strings


@dataclass
class RankSlice:
    """The rows one rank serves: global rows ``start .. start + len(prompts) - 1``."""

    start: int
    prompts: list[str]
    overrides: list[str]

    @property
    def index(self) -> np.ndarray:
        return np.arange(self.start, self.start + len(self.prompts), dtype=np.int64)


def _scatter_strings(strings: list[str] | None, bounds: np.ndarray | None, comm) -> list[str]:
    if strings is not None:
        buffer, lengths, byte_counts = pack_string_slices(strings, bounds)
        row_counts = np.diff(bounds)
    else:
        buffer = lengths = byte_counts = row_counts = None
    my_bytes = _mpi.scatterv(buffer, byte_counts, np.uint8, comm)
    my_lengths = _mpi.scatterv(lengths, row_counts, np.int64, comm)
    return unpack_strings(my_bytes, my_lengths)


def scatter_rows(prompt_set: PromptSet | None, comm=None) -> RankSlice:
    """Give each rank its contiguous slice of ``prompt_set`` (read on the root; ``None`` elsewhere).

    Slice sizes differ by at most one row; per-row sampling overrides travel with their rows.
    """
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    bounds = contiguous_bounds(len(prompt_set), size) if root else None
    has_overrides = _mpi.bcast(bool(root and any(prompt_set.overrides)), comm)
    start = _mpi.scatter(bounds[:-1].tolist() if root else None, comm)
    prompts = _scatter_strings(prompt_set.prompts if root else None, bounds, comm)
    if has_overrides:
        overrides = _scatter_strings(prompt_set.overrides if root else None, bounds, comm)
    else:
        overrides = [""] * len(prompts)
    return RankSlice(start, prompts, overrides)
