"""Rank 0's prompts to every rank: contiguous slices, strings as one UTF-8 buffer plus lengths."""
from __future__ import annotations

import numpy as np

from . import _mpi
from .inputs import PromptSet
from .packed import PackedStrings
from .partition import contiguous_bounds
from .rows import RequestRows
from .codec import cut_by_bytes, pack_string_slices, unpack_strings, utf8_lengths


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
                 counts: np.ndarray | None = None) -> RequestRows:
    """Give each rank a contiguous slice of the rows ``todo`` (all rows when ``None``).

    ``prompt_set``, ``todo`` and ``counts`` are given on the root (``None`` elsewhere). Slice
    sizes differ by at most one row, unless ``counts`` gives each rank's; per-row sampling
    overrides travel with their rows. The slices go out in rounds of at most
    :func:`~mpiswarm._mpi.message_byte_limit` bytes of text in all (each rank's next piece of
    at most its share of it), so no count passes a C int; a small input takes one round.
    """
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    prompts = overrides = bounds = pieces = None
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
        pieces = _pieces(prompts, overrides, bounds, _mpi.message_byte_limit() // size)
    has_overrides = _mpi.bcast(bool(root and any(overrides)), comm)
    n_rounds = _mpi.bcast(None if pieces is None else max(len(p) for p in pieces), comm)
    got = []
    for k in range(n_rounds):
        if root:  # round k: the k-th piece of every rank's slice
            spans = [p[k] if k < len(p) else (b, b) for p, b in zip(pieces, bounds[1:].tolist())]
            rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans]) if n_rounds > 1 else None
            round_bounds = np.concatenate([[0], np.cumsum([b - a for a, b in spans])]).astype(np.int64)
            args = (todo if rows is None else todo[rows], _pick(prompts, rows), _pick(overrides, rows), round_bounds)
        else:
            args = (None, None, None, None)
        got.append(_scatter_round(*args, has_overrides, comm))
    return RequestRows.concat(got)


def _pick(column: list[str], rows: np.ndarray | None) -> list[str]:
    """``column``'s entries at ``rows`` (all of it when None: one round)."""
    return column if rows is None else [column[i] for i in rows.tolist()]


def _pieces(prompts: list[str], overrides: list[str], bounds: np.ndarray, quota: int) -> list[list[tuple[int, int]]]:
    """Each rank's slice ``bounds[r]:bounds[r + 1]`` cut into pieces of at most ``quota`` bytes
    of prompts and overrides: ``(first, end)`` rows of each (at least one, maybe empty)."""
    sizes = utf8_lengths(prompts) + utf8_lengths(overrides)
    out = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        ends = [a + e for e in cut_by_bytes(sizes[a:b], max(1, quota))]
        out.append(list(zip([a] + ends[:-1], ends)) or [(a, a)])
    return out


def _scatter_round(todo: np.ndarray | None, prompts: list[str] | None, overrides: list[str] | None,
                   bounds: np.ndarray | None, has_overrides: bool, comm) -> RequestRows:
    """One scatter of rows ``bounds[r]:bounds[r + 1]`` of ``todo`` (root only) to rank r."""
    root = todo is not None
    index = _mpi.scatterv(todo, np.diff(bounds) if root else None, np.int64, comm)
    my_prompts = _scatter_strings(prompts, bounds, comm)
    if has_overrides:
        my_overrides = _scatter_strings(overrides, bounds, comm)
    else:
        my_overrides = [""] * len(my_prompts)
    return RequestRows(index, my_prompts, my_overrides)


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
