"""How the rows reach the output file: two layouts behind one interface.

* :class:`SingleLayout` — every rank's rows to rank 0 in rounds (:func:`mpiswarm.gather.gather_in_rounds`),
  rank 0 writing each round into one self-contained file as it comes.
* :class:`VirtualLayout` — every writing rank writes a contiguous block of rows to its own part
  file (:func:`write_parts`, rows moved by :func:`mpiswarm.gather.redistribute_in_rounds`), then
  rank 0 writes the output as HDF5 virtual datasets over the parts.

Both are collective: every rank calls :meth:`Layout.begin` then :meth:`Layout.write_rows`.
A write that fails (disk full, quota) is kept by a :class:`~mpiswarm.store.WriteGuard` while
the rounds go on; every rank then learns it (:class:`WriteFailed`).
"""
from __future__ import annotations

import os
import secrets
import time
from contextlib import ExitStack
from typing import Callable

import numpy as np

from . import _mpi
from .aggregate import VoteCounter
from .codec import utf8_lengths
from .ensemble import EnsemblePlan
from .gather import gather_in_rounds, optional_columns, redistribute_in_rounds
from .inputs import PromptSet
from .packed import PackedColumns, carried, row_bytes
from .partition import contiguous_bounds
from .records import ResultColumns
from .store import (WriteGuard, create_part_file, create_result_file, create_virtual_file, estimate_file_bytes,
                    part_name, parts_dir, remove_parts)
from .summary import Tally

#: rows rank 0 gathers and writes at a time (bounded memory for jobs of millions of rows)
GATHER_ROWS_PER_ROUND = 1 << 18
#: the virtual layout's rounds: rank 0 encodes at most this many rows of prompts and custom_ids
#: at a time for all ranks together (each rank still gets at most GATHER_ROWS_PER_ROUND rows a
#: round); rounds are per-destination work, so at 10,000 ranks fewer, larger ones are cheaper
VIRTUAL_TEXT_ROWS_PER_ROUND = 1 << 20


class WriteFailed(Exception):
    """The output (or a part of it) could not be written: one line naming the path and why.
    Every rank raises it, after the collectives; the checkpoints stay for the next attempt."""


class Layout:
    """The rows of one run on their way to the output file (collective, every rank).

    ``results``: the rows this rank answered in this run; ``finished``, ``prompt_set``,
    ``ensemble``: the root's (the rows of earlier attempts; None elsewhere). After :meth:`write_rows`,
    :attr:`tally` (root) counts every row written, :attr:`votes` an ensemble's votes (root),
    :attr:`parts` the part files a virtual layout wrote."""

    def __init__(self, output: str, n_rows: int, n: int, finished: ResultColumns | None, results: ResultColumns,
                 prompt_set: PromptSet | None, ensemble: EnsemblePlan | None, repeat: bool, comm=None):
        self.output, self.n_rows, self.n = output, n_rows, n
        self.finished, self.results = finished, results
        self.prompt_set, self.ensemble, self.repeat = prompt_set, ensemble, repeat
        self.comm = comm
        self.root = _mpi.rank_and_size(comm)[0] == _mpi.ROOT
        #: every row this rank holds: the root's include the rows of earlier attempts
        self.held = (ResultColumns.concat([finished, results]) if self.root and finished is not None and len(finished)
                     else results)
        self.tally = Tally()
        self.votes = VoteCounter(ensemble.n_prompts) if ensemble is not None else None
        self.parts: list = []

    def begin(self, guard: WriteGuard | None):
        """Everything before the output file opens; returns its context on the root (None elsewhere)."""
        raise NotImplementedError

    def write_rows(self, out, guard: WriteGuard | None) -> float:
        """Every row into the open output (``out`` on the root); returns this rank's seconds writing."""
        raise NotImplementedError

    def _texts(self):
        return [self.prompt_set.prompts, self.prompt_set.custom_ids] if self.root else None


class SingleLayout(Layout):
    """One self-contained file, written by rank 0 as the gather's rounds come."""

    def begin(self, guard):
        size = _mpi.rank_and_size(self.comm)[1]
        need = file_bytes(self.held, [0] + [self.n_rows] * size, self._texts(), self.comm)
        if not self.root:
            return None
        guard.reserve(need)  # room for the whole file, or refused before it is begun
        return create_result_file(self.output, self.n_rows, self.n)

    def write_rows(self, out, guard):
        """Every rank's rows to rank 0 in rounds, rank 0 writing each round as it comes, through
        ``guard``: a write that fails stops the writing, not the rounds."""
        write = out.write_rows if out is not None else None  # None: the file could not be begun
        prompts, ids = (self.prompt_set.prompts, self.prompt_set.custom_ids) if self.root else (None, None)
        write_s = 0.0
        if self.root and len(self.finished):  # the rows of earlier attempts, from the checkpoints
            part = PackedColumns.from_results(self.finished)
            guard.run(write, prompts, ids, part)
            self.tally.add(part)
            _count_votes(self.votes, self.ensemble, part)
        for part in gather_in_rounds(self.results, GATHER_ROWS_PER_ROUND, self.comm):
            w0 = time.perf_counter()
            if self.root:
                guard.run(write, prompts, ids, part)
            write_s += time.perf_counter() - w0
            self.tally.add(part)
            _count_votes(self.votes, self.ensemble, part)
        return write_s


class VirtualLayout(Layout):
    """Every writer's block of rows in a part file; rank 0's output maps them."""

    def __init__(self, *args, parts_per: str = "rank", **kwargs):
        super().__init__(*args, **kwargs)
        self.parts_per = parts_per
        self._write_s = 0.0

    def begin(self, guard):
        plan_here = _mpi.bcast(self.ensemble, self.comm) if self.repeat else None  # each writer counts its votes
        counted = VoteCounter(plan_here.n_prompts) if plan_here is not None else None
        texts = self._texts() or [None, None]
        tally, self._write_s, self.parts, optional = write_parts(
            self.output, self.n_rows, self.n, self.held, *texts, self.comm, parts_per=self.parts_per,
            visit=None if counted is None else (lambda part: _count_votes(counted, plan_here, part)))
        if counted is not None:
            every = _mpi.gather(counted, self.comm)  # in rank order: rows in input order
            if self.root:
                for other in every:
                    self.votes.merge(other)
        if not self.root:
            return None
        self.tally = tally
        return create_virtual_file(self.output, self.n_rows, self.n, self.parts, optional)

    def write_rows(self, out, guard):
        if out is not None:
            out.n_ok = self.tally.ok
        return self._write_s


def layout_for(name: str, *args, parts_per: str = "rank", **kwargs) -> Layout:
    """The layout called ``name`` (``single`` or ``virtual``)."""
    if name == "virtual":
        return VirtualLayout(*args, parts_per=parts_per, **kwargs)
    return SingleLayout(*args, **kwargs)


def _count_votes(votes: VoteCounter | None, ensemble: EnsemblePlan | None, part: ResultColumns) -> None:
    """Add a block of an ensemble's rows (every choice a vote) to the votes per prompt."""
    if votes is not None and len(part):
        sources = np.repeat(ensemble.source_of(part.index), part.n)
        votes.add(sources.tolist(), part.completion, np.repeat(part.ok, part.n).tolist())


def file_bytes(held: ResultColumns, bounds: np.ndarray, texts: list[list[str]] | None, comm=None) -> int:
    """About how many bytes the result file this rank writes will take: the file of rows
    ``bounds[rank]:bounds[rank + 1]`` (0 for a rank that writes none), from the rows every rank
    ``held`` and the root's text columns ``texts`` (prompts and custom_ids, None elsewhere). For
    :meth:`~mpiswarm.store.WriteGuard.reserve`: a file that cannot fit is refused before it is begun."""
    rank, size = _mpi.rank_and_size(comm)
    bounds = np.asarray(bounds, dtype=np.int64)
    block = np.searchsorted(bounds, held.index, side="right") - 1
    sizes = np.bincount(block, weights=row_bytes(held, carried(held)), minlength=size)[:size]
    answers = _mpi.allreduce_sum_array(sizes.astype(np.int64), comm)
    per_block = None
    if texts is not None:
        lengths = sum((utf8_lengths(column) for column in texts), np.zeros(int(bounds[-1]), np.int64))
        edges = np.concatenate([[0], np.cumsum(lengths)])
        per_block = [int(edges[b] - edges[a]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    mine = _mpi.scatter(per_block, comm)
    rows = int(bounds[rank + 1] - bounds[rank])
    if not rows:
        return 0
    n = held.n
    return estimate_file_bytes(mine + int(answers[rank]), rows * (3 + 3 * n))


def part_bounds(n_rows: int, writers: list[bool]) -> np.ndarray:
    """Rows ``bounds[r]:bounds[r + 1]`` for rank r: contiguous blocks of even size for the ranks
    that write a part (``writers[r]``), none for the others."""
    sizes = np.zeros(len(writers), dtype=np.int64)
    sizes[np.flatnonzero(writers)] = np.diff(contiguous_bounds(n_rows, max(1, sum(writers))))
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def write_parts(output: str, n_rows: int, n: int, local: ResultColumns, prompts: list[str] | None,
                custom_ids: list[str] | None, comm=None, parts_per: str = "rank",
                visit: Callable[[PackedColumns], None] | None = None) -> tuple[Tally | None, float, list, bool]:
    """The virtual layout's collective write: every writing rank (every rank, or with
    ``parts_per="node"`` each node's first rank) writes a contiguous block of the input's rows
    to its own part file in ``OUTPUT.parts/`` — its block's results from whichever ranks hold
    them (``local``), the ``prompts`` and ``custom_ids`` from the root (None elsewhere) — in
    rounds; ``visit`` sees every block of rows it writes. A part that cannot be written (disk
    full, quota) raises :class:`WriteFailed` on every rank once the rounds are over, this run's
    parts removed. Returns, on the root, every rank's
    :class:`Tally` added up (None elsewhere); this
    rank's seconds writing; every part as ``(path relative to the output's directory, first
    row, rows)``; the optional columns the parts have. Every part file is in place when it
    returns; the root then writes the output over them (:func:`~mpiswarm.store.create_virtual_file`)."""
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    token = _mpi.bcast(secrets.token_hex(4) if root else None, comm)
    directory = parts_dir(output)
    if root:
        os.makedirs(directory, exist_ok=True)
    _mpi.barrier_sleeping(comm)
    optional = optional_columns(local, comm)
    writes = parts_per == "rank" or _mpi.local_rank(comm) == 0
    bounds = part_bounds(n_rows, _mpi.allgather(writes, comm))
    first, count = int(bounds[rank]), int(bounds[rank + 1] - bounds[rank])
    texts = (lambda a, b: [prompts[a:b], custom_ids[a:b]]) if root else None  # noqa: E731
    tally, write_s = Tally(), 0.0
    path = os.path.join(directory, part_name(token, rank))
    guard = WriteGuard(path)  # a write that fails (disk full, quota) leaves the rounds going
    guard.reserve(file_bytes(local, bounds, texts(0, n_rows) if root else None, comm))
    try:
        with ExitStack() as writing:
            part = guard.enter(writing, create_part_file(path, first, count, n, optional)) if count else None
            for block in redistribute_in_rounds(local, bounds, GATHER_ROWS_PER_ROUND, texts, 2, comm,
                                                text_rows_per_round=VIRTUAL_TEXT_ROWS_PER_ROUND):
                if part is None:  # no rows of its own (more ranks than rows, or not its node's writer)
                    continue
                w0 = time.perf_counter()
                guard.run(part.write_rows, block.texts[0], block.texts[1], block.rows, base=block.start)
                write_s += time.perf_counter() - w0
                tally.add(block.rows)
                if visit is not None:
                    visit(block.rows)
            guard.check()  # a failed part is removed, never renamed into place
    except OSError as exc:  # also: closing or renaming the part
        guard.error = guard.error or exc
    tallies = _mpi.gather(tally, comm)
    failures = [m for m in _mpi.allgather(guard.message, comm) if m]
    _mpi.barrier_sleeping(comm)  # every part renamed into place before the output points to them
    name = os.path.basename(directory)
    parts = [(os.path.join(name, part_name(token, r)), int(bounds[r]), int(bounds[r + 1] - bounds[r]))
             for r in range(size)]
    if failures:
        if root:  # this run's parts that were written point nowhere: remove them (earlier runs' stay)
            remove_parts(output, parts)
        raise WriteFailed(failures[0])
    return (Tally.merge(tallies) if root else None), write_s, parts, optional
