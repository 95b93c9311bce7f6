"""Every rank's results back to rank 0, in input order (``Gatherv`` of buffers plus lengths)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from . import _mpi
from .records import NUMERIC_COLUMNS, STRING_COLUMNS, RankStats, ResultColumns
from .wire import pack_strings, unpack_strings


def any_reasoning(local: ResultColumns, comm=None) -> bool:
    """Whether some rank's rows carry a reasoning column (the same answer on every rank)."""
    return bool(_mpi.allreduce_max(int(local.reasoning is not None), comm))


def gather_results(local: ResultColumns, comm=None, reasoning: bool | None = None) -> ResultColumns | None:
    """Gather ``local`` from every rank; the root gets all rows sorted by ``index``.

    ``reasoning`` says whether some rank has a reasoning column (None: ask every rank); only
    then is that column gathered, '' for the rows of ranks that have none."""
    if reasoning is None:
        reasoning = any_reasoning(local, comm)
    numeric = {name: _mpi.gatherv(getattr(local, name), comm)[0] for name in NUMERIC_COLUMNS}
    root = numeric["index"] is not None
    strings = {}
    for name in STRING_COLUMNS + (("reasoning",) if reasoning else ()):
        column = getattr(local, name)
        if column is None:  # reasoning, on a rank none of whose rows has any
            column = [""] * len(local.completion)
        # The root's own strings stay where they are: it sends an empty piece.
        mine = [] if root else column
        buffer, lengths = pack_strings(mine)
        all_bytes, _ = _mpi.gatherv(buffer, comm)
        all_lengths, _ = _mpi.gatherv(lengths, comm)
        if root:
            strings[name] = column + unpack_strings(all_bytes, all_lengths)
    if not root:
        return None
    return ResultColumns(n=local.n, **numeric, **strings).in_index_order()


def gather_in_rounds(local: ResultColumns, rows_per_round: int, comm=None) -> Iterator[ResultColumns]:
    """Gather ``local`` from every rank a round at a time: each round, every rank sends its next
    ``rows_per_round / ranks`` rows (in index order). The root gets each round's rows sorted by
    index — at most ``rows_per_round`` rows in memory at once; the others get nothing. Every
    rank must exhaust the iterator."""
    _, size = _mpi.rank_and_size(comm)
    local = local.in_index_order()
    block = max(1, rows_per_round // size)
    n_rounds = _mpi.allreduce_max(-(-len(local) // block), comm)
    reasoning = any_reasoning(local, comm)
    for k in range(n_rounds):
        part = local.take(np.arange(k * block, min((k + 1) * block, len(local))))
        got = gather_results(part, comm, reasoning)
        if got is not None:
            yield got


def gather_stats(stats: RankStats, comm=None) -> list[RankStats] | None:
    """Per-rank statistics on the root, in rank order (small: pickled)."""
    gathered = _mpi.gather(stats.as_dict(), comm)
    return None if gathered is None else [RankStats(**d) for d in gathered]
