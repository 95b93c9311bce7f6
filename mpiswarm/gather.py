"""Every rank's results back to rank 0, in input order — or, for a virtual layout, every
rank's results to the rank whose block of rows holds them (:func:`redistribute_in_rounds`).

Each round every rank packs its next rows into ONE byte message (:mod:`mpiswarm.packed`) and
rank 0 receives all of them with one ``Igatherv`` (two collectives a round: the sizes, the
bytes); the other ranks sleep while they wait (:func:`mpiswarm._mpi.gatherv_bytes`). Rank 0
keeps the strings as packed UTF-8 in the receive buffer: it gets :class:`PackedColumns`, which
the HDF5 writer takes as they are. Ranks pack round k+1 while rank 0 writes round k.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator

import numpy as np

from . import _mpi
from .packed import MESSAGE_OVERHEAD, PackedColumns, PackedStrings, carried, pack_message, row_bytes, unpack_messages
from .records import RankStats, ResultColumns
from .schema import OPTIONAL_COLUMNS
from .scatter import scatter_packed
from .codec import cut_by_bytes, utf8_lengths


def optional_columns(local: ResultColumns, comm=None) -> tuple[str, ...]:
    """The optional columns (reasoning) some rank's rows have: those a gather carries (the same
    answer on every rank)."""
    here = carried(local)
    held = _mpi.allreduce_sum_array(np.array([c in here for c in OPTIONAL_COLUMNS], np.int64), comm)
    return tuple(c for c, k in zip(OPTIONAL_COLUMNS, held.tolist()) if k)


def gather_packed(local: ResultColumns, comm=None, start: int = 0, stop: int | None = None,
                  optional: tuple[str, ...] = ()) -> PackedColumns | None:
    """Gather rows ``start:stop`` of every rank's ``local``; the root gets them sorted by
    ``index`` (strings packed), the others None. ``optional``: the optional columns to carry
    ('' for rows that have none); the same on every rank (:func:`optional_columns`)."""
    buffer, offsets = _mpi.gatherv_bytes(pack_message(local, start, stop, optional), comm)
    if buffer is None:
        return None
    return unpack_messages(buffer, offsets).in_index_order()


def gather_results(local: ResultColumns, comm=None, optional: tuple[str, ...] | None = None) -> ResultColumns | None:
    """Gather ``local`` from every rank; the root gets all rows sorted by ``index`` as
    :class:`ResultColumns` (strings decoded: for callers that want Python strings).

    ``optional``: the optional columns some rank has (None: ask every rank); only those are
    gathered, '' for the rows of ranks that have none."""
    if optional is None:
        optional = optional_columns(local, comm)
    got = gather_packed(local, comm, optional=optional)
    return None if got is None else got.to_results()


def gather_in_rounds(local: ResultColumns, rows_per_round: int, comm=None) -> Iterator[PackedColumns]:
    """Gather ``local`` from every rank a round at a time: each round, every rank sends its next
    rows (in index order), at most ``rows_per_round / ranks`` of them and at most
    ``message_byte_limit() / ranks`` bytes (:func:`mpiswarm._mpi.message_byte_limit`: no count
    of the round passes a C int, however long the answers). The root gets each round's rows
    sorted by index — at most ``rows_per_round`` rows in memory at once; the others get
    nothing. Every rank must exhaust the iterator."""
    _, size = _mpi.rank_and_size(comm)
    local = local.in_index_order()
    block = max(1, rows_per_round // size)
    optional = optional_columns(local, comm)
    quota = max(1, _mpi.message_byte_limit() // size - MESSAGE_OVERHEAD)
    ends = cut_by_bytes(row_bytes(local, optional), quota, block)
    n_rounds = _mpi.allreduce_max(len(ends), comm)
    starts = [0] + ends
    for k in range(n_rounds):
        a, b = (starts[k], ends[k]) if k < len(ends) else (len(local), len(local))
        got = gather_packed(local, comm, a, b, optional)
        if got is not None:
            yield got


def gather_stats(stats: RankStats, comm=None) -> list[RankStats] | None:
    """Per-rank statistics on the root, in rank order (small: pickled)."""
    gathered = _mpi.gather(stats.as_dict(), comm)
    return None if gathered is None else [RankStats(**d) for d in gathered]


def _longest_text_row(texts: Callable[[int, int], list[list[str]]], a: int, b: int, n_texts: int,
                      step: int = 1 << 20) -> int:
    """The most UTF-8 bytes (NULs included) one row's ``n_texts`` text columns take, read a
    million rows at a time (bounded memory)."""
    longest = 0
    if not n_texts:
        return 0
    for start in range(a, b, step):
        columns = texts(start, min(start + step, b))
        sizes = sum((utf8_lengths(columns[j]) + 1 for j in range(n_texts)), np.zeros(len(columns[0]), np.int64))
        longest = max(longest, int(sizes.max(initial=0)))
    return longest


@dataclass
class BlockRound:
    """One round of a rank's own block: the window of input rows ``start:stop``, the root's
    text columns for it (``texts[j]``: column j, one string a row of the window) and the
    results every rank held for its rows, sorted by index."""

    start: int
    stop: int
    texts: list[PackedStrings]
    rows: PackedColumns


def block_messages(local: ResultColumns, lo: np.ndarray, hi: np.ndarray, optional: tuple[str, ...]) -> list[bytes]:
    """Rows ``lo[r]:hi[r]`` of ``local`` (sorted by index) packed for rank r, one message a
    rank (``b""`` for a rank that gets none of them; no MPI)."""
    first, last = np.searchsorted(local.index, lo), np.searchsorted(local.index, hi)
    return [pack_message(local, a, b, optional) if b > a else b"" for a, b in zip(first.tolist(), last.tolist())]


def redistribute_in_rounds(local: ResultColumns, bounds: np.ndarray, rows_per_round: int,
                           texts: Callable[[int, int], list[list[str]]] | None = None,
                           n_texts: int = 0, comm=None, text_rows_per_round: int | None = None) -> Iterator[BlockRound]:
    """Move every row of every rank's ``local`` to the rank whose block holds it (rank r's block
    is rows ``bounds[r]:bounds[r + 1]``), a round at a time, one packed message from each rank
    to each block it holds rows of (:func:`mpiswarm._mpi.alltoallv_bytes`), with ``n_texts`` string
    columns for the same rows from the root (``texts(a, b)`` on the root: the columns of rows
    ``a:b``, e.g. the prompts and custom_ids), so that the root's part of a round is encoding
    strings, never writing them. Each round every rank gets the next window of its block: at
    most ``rows_per_round`` rows, and at most ``text_rows_per_round`` (default
    ``rows_per_round``) rows of text for all the ranks that have a block, together, on the
    root; and few enough rows that no writer receives more than
    :func:`~mpiswarm._mpi.message_byte_limit` bytes of answers a round, nor the root scatters
    more bytes of text (windows sized by the longest row of each: rows much longer than the
    rest make the rounds smaller). Every rank must exhaust the iterator."""
    rank, size = _mpi.rank_and_size(comm)
    bounds = np.asarray(bounds, dtype=np.int64)
    local = local.in_index_order()
    text_rows = rows_per_round if text_rows_per_round is None else text_rows_per_round
    receivers = max(1, int(np.count_nonzero(np.diff(bounds))))  # ranks with a block (the root encodes their texts)
    optional = optional_columns(local, comm)
    limit = _mpi.message_byte_limit()
    longest = _mpi.allreduce_max(int(row_bytes(local, optional).max(initial=0)), comm)
    longest_text = _mpi.bcast(_longest_text_row(texts, int(bounds[0]), int(bounds[-1]), n_texts)
                              if texts is not None and rank == _mpi.ROOT else 0, comm)
    window = max(1, min(rows_per_round, text_rows // receivers, (limit - MESSAGE_OVERHEAD) // max(1, longest),
                        limit // max(1, receivers * longest_text)))
    n_rounds = -(-int(np.diff(bounds).max(initial=0)) // window)
    for k in range(n_rounds):
        lo = np.minimum(bounds[:-1] + k * window, bounds[1:])
        hi = np.minimum(lo + window, bounds[1:])
        buffer, offsets = _mpi.alltoallv_bytes(block_messages(local, lo, hi, optional), comm)
        rows = unpack_messages(buffer, offsets).in_index_order() if len(offsets) else PackedColumns.empty(local.n)
        columns = None
        if texts is not None and rank == _mpi.ROOT:
            windows = [texts(a, b) for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
            columns = [list(chain.from_iterable(w[j] for w in windows)) for j in range(n_texts)]
        counts = np.concatenate([[0], np.cumsum(hi - lo)])
        got = [scatter_packed(None if columns is None else columns[j], counts, comm) for j in range(n_texts)]
        yield BlockRound(int(lo[rank]), int(hi[rank]), got, rows)
