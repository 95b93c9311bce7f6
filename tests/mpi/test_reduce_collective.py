"""The tree reduction's MPI plumbing (tier 2: pytest-mpi): whoever holds which answers,
every rank count gives the tree a single process computes.

The models are replaced by a combiner that writes down what it combined, so the final text
spells out the whole tree and any misplaced, lost or duplicated input shows.
"""
import random

import numpy as np
import pytest

from mpiswarm import _mpi
from mpiswarm.records import RankStats, ResultColumns
from mpiswarm.reduce import NO_INPUT, Items, ReduceOptions, reduce_tree
from mpiswarm.tree import group_inputs, level_sizes

pytestmark = pytest.mark.mpi(min_size=1)


def combined(level, group, texts):
    return f"L{level}G{group}(" + ",".join(texts) + ")"


class RecordingCombiner:
    """Combines by concatenation; fails every group whose number is in ``fail``."""

    def __init__(self, rank, fanin, fail=()):
        self.options = ReduceOptions("{responses}", fanin)
        self.stats = RankStats(rank=rank, host="h", endpoint="e")
        self.fail = set(fail)

    async def combine(self, level, groups, inputs):
        results = ResultColumns.pending(groups, 1, self.stats.rank)
        for i, (g, texts) in enumerate(zip(groups.tolist(), inputs)):
            if not texts:
                results.fail([i], NO_INPUT)
            elif (level, g) in self.fail:
                results.fail([i], "HTTP 500: boom")
            else:
                results.completion[i] = combined(level, g, texts)
                results.answered([i])
        return results, [""] * len(groups), np.zeros(len(groups), bool), False


def reference(texts, ok, fanin, fail=()):
    """The tree in one process: (sizes, final text, final ok)."""
    level_texts, level_ok = list(texts), list(ok)
    sizes = level_sizes(len(texts), fanin)
    for level, size in enumerate(sizes, 1):
        out_t, out_ok = [], []
        for g in range(size):
            got = [level_texts[i] for i in group_inputs(g, fanin, len(level_texts)) if level_ok[i]]
            good = bool(got) and (level, g) not in fail
            out_t.append(combined(level, g, got) if good else "")
            out_ok.append(good)
        level_texts, level_ok = out_t, out_ok
    return sizes, level_texts[0] if texts else "", level_ok[0] if texts else False


@pytest.mark.parametrize("n_answers, fanin", [(64, 4), (48, 4), (10, 3), (1, 4), (7, 8), (100, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "scattered", "all_on_one"])
def test_reduction_matches_the_single_process_tree(n_answers, fanin, layout):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    texts = [f"a{i}" for i in range(n_answers)]
    ok = [i % 7 != 3 for i in range(n_answers)]  # some answers failed: left out, counted
    fail = {(1, 1)} if n_answers > fanin else set()
    if layout == "contiguous":
        holder = np.repeat(np.arange(size), -(-n_answers // size))[:n_answers]
    elif layout == "scattered":
        holder = np.array([random.Random(n_answers * 31 + i).randrange(size) for i in range(n_answers)])
    else:
        holder = np.full(n_answers, size - 1)
    mine = np.flatnonzero(holder == rank)
    items = Items(mine.astype(np.int64), [texts[i] for i in mine], np.array([ok[i] for i in mine], bool))
    got = reduce_tree(items, n_answers, RecordingCombiner(rank, fanin, fail), comm)

    sizes, final, final_ok = reference(texts, ok, fanin, fail)
    if rank != _mpi.ROOT:
        assert got is None
        return
    assert got.sizes() == sizes
    assert (got.final, got.final_ok) == (final, final_ok)
    if sizes:
        first = got.levels[0]
        assert first.n_left_out.sum() == sum(not x for x in ok)
        assert first.n_inputs.sum() == n_answers
        assert first.first_input.tolist() == [g * fanin for g in range(sizes[0])]
        for g, owner in enumerate(first.results.rank.tolist()):  # the rank holding most inputs
            held = np.bincount(holder[list(group_inputs(g, fanin, n_answers))], minlength=size)
            assert owner == int(np.argmax(held))


def test_allreduce_argmax_picks_the_lowest_rank_on_a_tie():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    counts = np.array([rank, 5, size - rank, 0], dtype=np.int64)
    assert _mpi.allreduce_argmax(counts, comm).tolist() == [size - 1, 0, 0, 0]
