"""The one NUL rule: every text that reaches HDF5, through every writer of mpiswarm.store, is
stored with U+0000 as U+FFFD and a lone surrogate as '?' (tier 1: no MPI)."""
import json

import h5py
import numpy as np
import pytest

from mpiswarm.aggregate import VoteCounter
from mpiswarm.ensemble import EnsemblePlan
from mpiswarm.codec import storable
from mpiswarm.packed import PackedColumns, PackedStrings
from mpiswarm.records import RankStats, ResultColumns
from mpiswarm.reduce import Level, ReduceOptions, Reduction
from mpiswarm.store import (create_part_file, create_result_file, create_virtual_file, read_reduction,
                            read_results, write_results)

#: texts real models and users produce that HDF5 cannot hold as they are
RAW = ["nul\x00inside", "\x00", "lone \udc80 surrogate", "both\x00and\ud800", "plain", "naïve 東京 🙂"]
STORED = ["nul\ufffdinside", "\ufffd", "lone ? surrogate", "both\ufffdand?", "plain", "naïve 東京 🙂"]


def test_storable_is_the_rule():
    assert [storable(t) for t in RAW] == STORED
    assert all(storable(s) == s for s in STORED)  # idempotent
    # packed strings (the answers' fast path) follow the same rule byte for byte
    packed = PackedStrings.pack(RAW)
    assert packed.has_nul and [storable(t) for t in packed.decode()] == STORED
    clean = PackedStrings.pack([t for t in RAW if "\x00" not in t])
    assert not clean.has_nul and clean.decode() == [storable(t) for t in RAW if "\x00" not in t]


def _results(n: int, texts: list[str], reasoning: bool = False) -> ResultColumns:
    k = len(texts)
    res = ResultColumns.pending(np.arange(k), n=n, rank=1)
    res.completion[:] = [t for t in texts for _ in range(n)]
    res.finish_reason[:] = [t for t in texts for _ in range(n)]
    res.error[:] = texts
    res.ok[:] = True
    res.done[:] = True
    if reasoning:
        for flat in range(k * n):
            res.set_reasoning(flat, texts[flat // n])
    return res


@pytest.mark.parametrize("n", [1, 2])
def test_row_columns_single_layout(tmp_path, n):
    path = tmp_path / "out.h5"
    res = _results(n, RAW, reasoning=True)
    with create_result_file(path, len(RAW), n) as out:
        out.write_rows(RAW, RAW, res)
        out.write_ranks([RankStats(rank=0, host="h\x00st", endpoint="http://e\udc80/v1", extra={"why": "x\x00"})])
        out.set_attrs({"model": "m\x00del", "params": {"stop": ["\x00"]}})
    data = read_results(path)
    for name in ("prompt", "custom_id", "error"):
        assert data[name].tolist() == STORED, name
    for name in ("completion", "finish_reason", "reasoning"):
        got = data[name].tolist()
        assert (got if n == 1 else [row[0] for row in got]) == STORED, name
    assert data["ranks"]["host"].tolist() == ["h\ufffdst"]
    assert data["ranks"]["endpoint"].tolist() == ["http://e?/v1"]
    assert json.loads(data["ranks"]["extra"][0]) == {"why": "x\x00"}  # JSON escapes it: kept exactly
    assert data["attrs"]["model"] == "m\ufffddel" and data["attrs"]["params"] == {"stop": ["\x00"]}


def test_row_columns_virtual_layout(tmp_path):
    parts = tmp_path / "out.h5.parts"
    parts.mkdir()
    res = _results(1, RAW)
    half = len(RAW) // 2
    for name, first, count in (("a.h5", 0, half), ("b.h5", half, len(RAW) - half)):
        with create_part_file(parts / name, first, count) as part:
            rows = PackedColumns.from_results(res).take(np.arange(first, first + count))
            part.write_rows(RAW[first:first + count], RAW[first:first + count], rows, base=first)
    layout = [("out.h5.parts/a.h5", 0, half), ("out.h5.parts/b.h5", half, len(RAW) - half)]
    with create_virtual_file(tmp_path / "out.h5", len(RAW), 1, layout) as out:
        out.set_attrs({"model": "\x00"})
    data = read_results(tmp_path / "out.h5")
    for name in ("prompt", "custom_id", "completion", "finish_reason", "error"):
        assert data[name].tolist() == STORED, name
    assert data["attrs"]["model"] == "\ufffd"


def test_ensemble_votes(tmp_path):
    plan = EnsemblePlan(repeat=1, n_ranks=2, n_prompts=len(RAW), base_seed=0)
    votes = VoteCounter(len(RAW))
    sources = [p for p in range(len(RAW)) for _ in range(2)]
    votes.add(sources, [RAW[p] for p in sources], [True] * len(sources))
    path = tmp_path / "out.h5"
    with create_result_file(path, plan.n_rows) as out:
        out.write_ensemble(plan, votes.votes())
    with h5py.File(path) as f:
        assert f["ensemble/vote"].asstr()[()].tolist() == [s.strip() for s in STORED]


def test_reduction_levels_and_final(tmp_path):
    """The issue's crash: ``reduce/level_L/prompt`` with a NUL raised ValueError."""
    res = _results(1, RAW)
    level = Level(1, res, prompt=RAW, first_input=np.arange(len(RAW)), n_inputs=np.ones(len(RAW), np.int64),
                  n_left_out=np.zeros(len(RAW), np.int64), shortened=np.zeros(len(RAW), bool))
    reduction = Reduction(ReduceOptions("Combine\x00 {responses}", 2, "\n\x00\n"), len(RAW), [level],
                          final="the \x00 end \udc80", final_ok=False, final_error="HTTP 400: \x00")
    path = tmp_path / "out.h5"
    with create_result_file(path, 0) as out:
        out.write_reduce(reduction)
    got = read_reduction(path)
    (stored,) = got["levels"]
    for name in ("text", "prompt", "error", "finish_reason"):
        assert stored[name] == STORED, name
    assert got["final"] == "the \ufffd end ?" and got["error"] == "HTTP 400: \ufffd"
    with h5py.File(path) as f:
        assert f["reduce"].attrs["template"] == "Combine\ufffd {responses}"
        assert f["reduce"].attrs["joiner"] == "\n\ufffd\n"


def test_write_results_in_one_go(tmp_path):
    path = tmp_path / "out.h5"
    write_results(path, prompts=RAW, custom_ids=RAW, results=_results(1, RAW),
                  rank_stats=[RankStats(rank=0, host="\x00", endpoint="")], attrs={"model": "\udc80"})
    data = read_results(path)
    assert data["completion"].tolist() == STORED and data["attrs"]["model"] == "?"
