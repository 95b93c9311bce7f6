"""Rank 0's prompts to every rank: contiguous slices, strings as one UTF-8 buffer plus lengths."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _mpi
from .inputs import PromptSet
from .packed import PackedStrings
from .partition import contiguous_bounds
from .wire import pack_string_slices, unpack_strings


@dataclass
class RankSlice:
    """The rows one rank serves: their global row numbers, prompts and sampling overrides."""

    index: np.ndarray  # int64
    prompts: list[str]
    overrides: list[str]


def _scatter_strings(strings: list[str] | None, bounds: np.ndarray | None, comm) -> list[str]:
    if strings is not None:
        buffer, lengths, byte_counts = pack_string_slices(strings, bounds)
        row_counts = np.diff(bounds)
    else:
        buffer = lengths = byte_counts = row_counts = None
    my_bytes = _mpi.scatterv(buffer, byte_counts, np.uint8, comm)
    my_lengths = _mpi.scatterv(lengths, row_counts, np.int64, comm)
    return unpack_strings(my_bytes, my_lengths)


def scatter_rows(prompt_set: PromptSet | None, todo: np.ndarray | None = None, comm=None,
                 counts: np.ndarray | None = None) -> RankSlice:
    """Give each rank a contiguous slice of the rows ``todo`` (all rows when ``None``).

    ``prompt_set``, ``todo`` and ``counts`` are given on the root (``None`` elsewhere). Slice
    sizes differ by at most one row, unless ``counts`` gives each rank's; per-row sampling
    overrides travel with their rows.
    """
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    prompts = overrides = bounds = None
    if root:
        if todo is None:
            todo = np.arange(len(prompt_set), dtype=np.int64)
            prompts, overrides = prompt_set.prompts, prompt_set.overrides
        else:
            todo = np.asarray(todo, dtype=np.int64)
            rows = todo.tolist()
            prompts = [prompt_set.prompts[i] for i in rows]
            overrides = [prompt_set.overrides[i] for i in rows]
        if counts is None:
            bounds = contiguous_bounds(len(todo), size)
        else:
            bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    has_overrides = _mpi.bcast(bool(root and any(overrides)), comm)
    index = _mpi.scatterv(todo, np.diff(bounds) if root else None, np.int64, comm)
    my_prompts = _scatter_strings(prompts, bounds, comm)
    if has_overrides:
        my_overrides = _scatter_strings(overrides, bounds, comm)
    else:
        my_overrides = [""] * len(my_prompts)
    return RankSlice(index, my_prompts, my_overrides)


def scatter_packed(strings: list[str] | None, bounds: np.ndarray | None, comm=None) -> PackedStrings:
    """Strings ``bounds[r]:bounds[r + 1]`` of ``strings`` (given on the root) to rank r, as
    :class:`~mpiswarm.packed.PackedStrings` (UTF-8, NUL after each) ready for the HDF5 writer:
    the root encodes them once, nobody builds a Python string per row."""
    if strings is not None:
        packed = PackedStrings.pack(strings)
        ends = np.append(packed.starts, len(packed.data))  # string i's bytes and NUL: ends[i]:ends[i + 1]
        byte_counts, row_counts = np.diff(ends[bounds]), np.diff(bounds)
        data, lengths, has_nul = packed.data, packed.lengths, packed.has_nul
    else:
        data = lengths = byte_counts = row_counts = has_nul = None
    has_nul = _mpi.bcast(has_nul, comm)
    my_data = _mpi.scatterv(data, byte_counts, np.uint8, comm)
    return PackedStrings.from_lengths(my_data, _mpi.scatterv(lengths, row_counts, np.int64, comm), has_nul)
