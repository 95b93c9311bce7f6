"""Scatter and gather of string columns across ranks (tier 2: pytest-mpi).

Run with ``mpiexec -n 2 python -m pytest --with-mpi tests/mpi`` (and ``-n 4``);
``tests/e2e/test_mpi_tier.py`` does that from the plain test run.
"""
import numpy as np
import pytest

from mpiswarm import _mpi
from mpiswarm.gather import gather_results, gather_stats
from mpiswarm.inputs import PromptSet
from mpiswarm.partition import contiguous_bounds
from mpiswarm.records import RankStats, ResultColumns
from mpiswarm.scatter import scatter_rows

pytestmark = pytest.mark.mpi(min_size=2)
ALPHABET = ["", "a", "ünï", "☃🚀", "line\nbreak", "tab\tx", "\x00nul", "long " * 50]


def prompt_set(n_rows, with_overrides=False):
    prompts = [f"{ALPHABET[i % len(ALPHABET)]}#{i}" if i % 5 else "" for i in range(n_rows)]
    overrides = [('{"max_tokens":%d}' % (i % 3 + 1) if with_overrides and i % 2 else "") for i in range(n_rows)]
    return PromptSet("mem", prompts, [str(i) for i in range(n_rows)], overrides)


def comm_info():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    return comm, comm.Get_rank(), comm.Get_size()


@pytest.mark.parametrize("n_rows", [0, 1, 3, 4, 10, 101])
@pytest.mark.parametrize("with_overrides", [False, True])
def test_scatter_gives_each_rank_its_contiguous_slice(n_rows, with_overrides):
    comm, rank, size = comm_info()
    full = prompt_set(n_rows, with_overrides)
    piece = scatter_rows(full if rank == 0 else None, comm=comm)
    bounds = contiguous_bounds(n_rows, size)
    a, b = int(bounds[rank]), int(bounds[rank + 1])
    assert piece.prompts == full.prompts[a:b]  # ranks with zero rows get an empty slice
    assert piece.overrides == full.overrides[a:b]
    assert piece.index.tolist() == list(range(a, b))


@pytest.mark.parametrize("n_rows", [0, 2, 9, 64])
@pytest.mark.parametrize("n", [1, 3])
def test_gather_returns_every_row_in_input_order(n_rows, n):
    comm, rank, size = comm_info()
    full = prompt_set(n_rows)
    piece = scatter_rows(full if rank == 0 else None, comm=comm)
    res = ResultColumns.pending(piece.index, n, rank)
    for i, prompt in enumerate(piece.prompts):
        for j in range(n):
            res.completion[i * n + j] = f"{prompt[::-1]}|{j}|ü"
            res.finish_reason[i * n + j] = "length" if j else "stop"
        row = int(piece.index[i])
        res.ok[i] = row % 4 != 1
        res.error[i] = "" if res.ok[i] else f"err {row} ☃"
        res.prompt_tokens[i] = row
    everything = gather_results(res, comm)
    if rank != 0:
        assert everything is None
        return
    assert everything.index.tolist() == list(range(n_rows))
    expected = [f"{p[::-1]}|{j}|ü" for p in full.prompts for j in range(n)]
    assert everything.completion == expected
    assert everything.ok.tolist() == [i % 4 != 1 for i in range(n_rows)]
    assert everything.error == ["" if i % 4 != 1 else f"err {i} ☃" for i in range(n_rows)]
    assert everything.prompt_tokens.tolist() == list(range(n_rows))
    bounds = contiguous_bounds(n_rows, size)
    assert everything.rank.tolist() == np.repeat(np.arange(size), np.diff(bounds)).tolist()


@pytest.mark.parametrize("n_rows", [0, 5, 50])
def test_scatter_a_subset_of_rows(n_rows):
    """A resumed job scatters only the rows still to do."""
    comm, rank, size = comm_info()
    full = prompt_set(n_rows, with_overrides=True)
    todo = np.arange(0, n_rows, 3)
    piece = scatter_rows(full if rank == 0 else None, todo if rank == 0 else None, comm=comm)
    bounds = contiguous_bounds(len(todo), size)
    mine = todo[bounds[rank]:bounds[rank + 1]].tolist()
    assert piece.index.tolist() == mine
    assert piece.prompts == [full.prompts[i] for i in mine]
    assert piece.overrides == [full.overrides[i] for i in mine]


def test_gather_sorts_rows_served_out_of_order():
    """Rows need not be contiguous per rank (dynamic scheduling): the root sorts by index."""
    comm, rank, size = comm_info()
    mine = np.arange(rank, 40, size)[::-1].copy()
    res = ResultColumns.pending(mine, 2, rank)
    res.completion[:] = [f"{i}.{j}" for i in mine.tolist() for j in range(2)]
    everything = gather_results(res, comm)
    if rank == 0:
        assert everything.index.tolist() == list(range(40))
        assert everything.completion == [f"{i}.{j}" for i in range(40) for j in range(2)]
        assert everything.rank.tolist() == [i % size for i in range(40)]


def test_stats_and_local_rank():
    comm, rank, size = comm_info()
    stats = gather_stats(RankStats(rank=rank, host=_mpi.hostname(), endpoint=f"e{rank}", n_calls=rank), comm)
    if rank == 0:
        assert [s.endpoint for s in stats] == [f"e{r}" for r in range(size)]
        assert [s.n_calls for s in stats] == list(range(size))
    assert _mpi.local_rank(comm) == rank  # every rank is on this one node


@pytest.mark.parametrize("rows_per_round", [1, 7, 1000])
def test_gather_in_rounds_bounds_what_the_root_holds(rows_per_round):
    """Rows served out of order, gathered a round at a time: the root sees every row once,
    each round sorted and no larger than asked."""
    from mpiswarm.gather import gather_in_rounds

    comm, rank, size = comm_info()
    mine = np.arange(rank, 53, size)[::-1].copy()
    res = ResultColumns.pending(mine, 1, rank)
    res.completion[:] = [f"answer {i}" for i in mine.tolist()]
    seen = []
    for part in gather_in_rounds(res, rows_per_round, comm):
        assert rank == 0
        assert len(part) <= max(rows_per_round, size)
        assert part.index.tolist() == sorted(part.index.tolist())
        assert part.to_results().completion == [f"answer {i}" for i in part.index.tolist()]
        seen += part.index.tolist()
    if rank == 0:
        assert sorted(seen) == list(range(53))


@pytest.mark.parametrize("thinking_ranks", ["none", "odd", "root"])
@pytest.mark.parametrize("n", [1, 2])
def test_reasoning_column_is_gathered_only_when_some_rank_has_one(thinking_ranks, n):
    """Reasoning answers on some ranks: the root gets the column for every row ('' where a rank
    had none); when no rank has any, no column crosses at all."""
    from mpiswarm.gather import gather_in_rounds

    comm, rank, size = comm_info()
    mine = np.arange(rank, 30, size)
    res = ResultColumns.pending(mine, n, rank)
    thinks = {"none": False, "odd": rank % 2 == 1, "root": rank == 0}[thinking_ranks]
    if thinks:
        for i, row in enumerate(mine.tolist()):
            res.set_reasoning(i * n + n - 1, f"why {row} ☃")
    parts = list(gather_in_rounds(res, 8, comm))
    if rank != 0:
        assert parts == []
        return
    if thinking_ranks == "none":
        assert all(p.reasoning is None for p in parts)
        return
    got = {}
    for part in parts:
        assert part.reasoning is not None and len(part.reasoning) == len(part) * n
        for i, row in enumerate(part.index.tolist()):
            got[row] = part.reasoning[i * n : i * n + n]
    thinker = {"odd": lambda r: r % 2 == 1, "root": lambda r: r == 0}[thinking_ranks]
    assert got == {row: [""] * (n - 1) + ([f"why {row} ☃"] if thinker(row % size) else [""])
                   for row in range(30)}


def test_gatherv_bytes_returns_every_message_and_where_it_starts():
    comm, rank, size = comm_info()
    mine = bytes([rank]) * (rank * 3)  # rank 0 sends nothing
    buffer, offsets = _mpi.gatherv_bytes(mine, comm)
    if rank != 0:
        assert buffer is None and offsets is None
        return
    assert offsets.tolist() == [sum(r * 3 for r in range(k)) for k in range(size)]
    assert buffer.tobytes() == b"".join(bytes([r]) * (r * 3) for r in range(size))


def test_waiting_in_a_sleeping_barrier_costs_no_core():
    """Ranks that are done early wait without spinning (MPICH's Barrier spins: on a shared node
    that core is taken from the ranks still working)."""
    import time

    comm, rank, size = comm_info()
    _mpi.barrier_sleeping(comm)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if rank == 0:
        time.sleep(1.0)  # the late rank (what is being waited for, not synchronisation)
    _mpi.barrier_sleeping(comm)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if rank != 0:
        assert wall >= 0.9
        assert cpu < 0.1 * wall, f"rank {rank} used {cpu:.2f} s of CPU in {wall:.2f} s of waiting"


@pytest.mark.parametrize("n_rows, rows_per_round, text_rows", [(0, 8, None), (3, 8, None), (101, 8, None),
                                                               (101, 1 << 18, None), (257, 2, None), (257, 50, 12)])
@pytest.mark.parametrize("n", [1, 2])
def test_redistribute_gives_each_rank_its_block_with_the_roots_texts(n_rows, rows_per_round, text_rows, n):
    """Rows served anywhere (here: dealt round-robin, shuffled) arrive at the rank whose block
    holds them, a window at a time, with the root's prompts and ids for the same rows."""
    from mpiswarm.gather import redistribute_in_rounds

    comm, rank, size = comm_info()
    full = prompt_set(n_rows)
    mine = np.random.default_rng(rank).permutation(np.arange(rank, n_rows, size))
    res = ResultColumns.pending(mine, n, rank)
    for i, row in enumerate(mine.tolist()):
        res.completion[i * n:(i + 1) * n] = [f"{full.prompts[row]}>{j}" for j in range(n)]
        res.ok[i] = res.done[i] = row % 3 != 0
        res.error[i] = "" if res.ok[i] else f"bad {row}"
    bounds = contiguous_bounds(n_rows, size)
    texts = (lambda a, b: [full.prompts[a:b], full.custom_ids[a:b]]) if rank == 0 else None
    receivers = max(1, int(np.count_nonzero(np.diff(bounds))))
    window = max(1, min(rows_per_round, (text_rows or rows_per_round) // receivers))
    seen, rows_got = [], []
    for block in redistribute_in_rounds(res, bounds, rows_per_round, texts, 2, comm, text_rows_per_round=text_rows):
        assert block.stop - block.start <= window
        assert block.rows.index.tolist() == list(range(block.start, block.stop))
        assert block.texts[0].decode() == full.prompts[block.start:block.stop]
        assert block.texts[1].decode() == full.custom_ids[block.start:block.stop]
        seen += list(range(block.start, block.stop))
        rows_got.append(block.rows.to_results())
    assert seen == list(range(int(bounds[rank]), int(bounds[rank + 1])))
    got = ResultColumns.concat(rows_got) if rows_got else ResultColumns.pending(np.zeros(0, np.int64), n, 0)
    assert got.completion == [f"{full.prompts[r]}>{j}" for r in seen for j in range(n)]
    assert got.rank.tolist() == [r % size for r in seen]
    assert got.error == ["" if r % 3 else f"bad {r}" for r in seen]


def test_alltoallv_bytes_delivers_every_message():
    comm, rank, size = comm_info()
    messages = [bytes([rank, dest]) * (dest + rank) for dest in range(size)]  # some empty
    buffer, offsets = _mpi.alltoallv_bytes(messages, comm)
    expected = [bytes([src, rank]) * (src + rank) for src in range(size)]
    assert bytes(buffer) == b"".join(expected)
    assert offsets.tolist() == [sum(map(len, expected[:s])) for s in range(size) if expected[s]]


# --- No MPI message over the C-int limit (issue 16, item 4): a small limit set for the test ---------
LIMIT = 1 << 20  # 1 MiB a round here (1 GiB in a job): answers of 64 KB, a handful a round
LONG = 64 << 10


def long_answer(row: int) -> str:
    """64 KB and more of text, some of it 2- and 4-byte UTF-8, different for every row."""
    return (f"row {row} " + "é🧬x" * (row % 5)).ljust(LONG + row, "z")


class Sizes:
    """Wraps an ``_mpi`` function and records the bytes each call moved on this rank."""

    def __init__(self, monkeypatch, name, measure):
        self.seen = []
        original = getattr(_mpi, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            self.seen.append(measure(args, result))
            return result

        monkeypatch.setattr(_mpi, name, wrapped)


def long_rows(rank, size, n_rows, n=1):
    mine = np.arange(rank, n_rows, size)[::-1].copy()
    res = ResultColumns.pending(mine, n, rank)
    res.completion[:] = [long_answer(int(i) * n + j) for i in mine.tolist() for j in range(n)]
    res.answered(range(len(mine)))
    return res


def test_gather_rounds_are_sized_by_bytes(monkeypatch):
    from mpiswarm.gather import gather_in_rounds

    comm, rank, size = comm_info()
    monkeypatch.setenv(_mpi.MAX_MESSAGE_BYTES_ENV, str(LIMIT))
    gathered = Sizes(monkeypatch, "gatherv_bytes", lambda args, result: len(args[0]) if result[0] is None
                     else len(result[0]))
    n_rows = 16 * size
    seen, rounds = [], 0
    for part in gather_in_rounds(long_rows(rank, size, n_rows), 1 << 18, comm):
        rounds += 1
        assert part.to_results().completion == [long_answer(i) for i in part.index.tolist()]
        seen += part.index.tolist()
    assert max(gathered.seen) <= LIMIT  # the root's whole receive, and each rank's message
    total = _mpi.allreduce_max(rounds, comm)
    if rank == 0:
        assert sorted(seen) == list(range(n_rows))
        # a rank's share of a round is LIMIT / size: 64 KB answers, 16 of them a rank
        assert total == -(-16 // ((LIMIT // size) // (LONG + 200))), total
        print(f"byte-sized gather: {n_rows} rows of 64 KB at {size} ranks, {LIMIT} bytes a round: {total} rounds")


@pytest.mark.parametrize("n", [1, 2])
def test_redistribution_rounds_are_sized_by_bytes(monkeypatch, n):
    from mpiswarm.gather import redistribute_in_rounds

    comm, rank, size = comm_info()
    monkeypatch.setenv(_mpi.MAX_MESSAGE_BYTES_ENV, str(LIMIT))
    moved = Sizes(monkeypatch, "alltoallv_bytes", lambda args, result: len(result[0]))
    scattered = Sizes(monkeypatch, "scatterv", lambda args, result: 0 if args[1] is None or args[2] is not np.uint8
                      else int(np.sum(args[1])))
    n_rows = 24 * size
    full = PromptSet("mem", [long_answer(i)[: LONG // 2] for i in range(n_rows)], [str(i) for i in range(n_rows)],
                     [""] * n_rows)
    texts = (lambda a, b: [full.prompts[a:b], full.custom_ids[a:b]]) if rank == 0 else None
    bounds = contiguous_bounds(n_rows, size)
    seen, rounds = [], 0
    for block in redistribute_in_rounds(long_rows(rank, size, n_rows, n), bounds, 1 << 18, texts, 2, comm):
        rounds += 1
        assert block.rows.to_results().completion == [long_answer(i * n + j) for i in range(block.start, block.stop)
                                                      for j in range(n)]
        assert block.texts[0].decode() == full.prompts[block.start:block.stop]
        seen += list(range(block.start, block.stop))
    assert seen == list(range(int(bounds[rank]), int(bounds[rank + 1])))
    assert max(moved.seen) <= LIMIT and max(scattered.seen) <= LIMIT
    assert rounds > 1


def test_scatter_rounds_are_sized_by_bytes(monkeypatch):
    comm, rank, size = comm_info()
    monkeypatch.setenv(_mpi.MAX_MESSAGE_BYTES_ENV, str(LIMIT))
    scattered = Sizes(monkeypatch, "scatterv", lambda args, result: 0 if args[1] is None or args[2] is not np.uint8
                      else int(np.sum(args[1])))
    n_rows = 10 * size + 3
    full = PromptSet("mem", [long_answer(i) for i in range(n_rows)], [str(i) for i in range(n_rows)],
                     ['{"max_tokens":%d}' % i if i % 3 else "" for i in range(n_rows)])
    piece = scatter_rows(full if rank == 0 else None, comm=comm)
    lo, hi = contiguous_bounds(n_rows, size)[rank:rank + 2]
    assert piece.index.tolist() == list(range(lo, hi))
    assert piece.prompts == full.prompts[lo:hi] and piece.overrides == full.overrides[lo:hi]
    if rank == 0:
        assert max(scattered.seen) <= LIMIT and len([s for s in scattered.seen if s]) > 2
