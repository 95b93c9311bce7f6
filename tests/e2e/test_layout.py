"""``--layout virtual`` end to end: every rank writes its block to a part file, the output maps
them with HDF5 virtual datasets; the rows read back exactly as from a single-layout file."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, write_jsonl
from .test_faults import EXIT_RESUME
from .test_run import assert_rows, endpoint_args, make_rows


def _args(tmp_path, rows, sim, out="out.h5", *extra):
    return ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / out, *endpoint_args(sim),
            "--max-tokens", 8, "--layout", "virtual", *extra]


def _parts(tmp_path, out="out.h5") -> list[str]:
    directory = tmp_path / f"{out}.parts"
    return sorted(os.listdir(directory)) if directory.exists() else []


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_virtual_layout_reads_like_one_file(tmp_path, sim_factory, n_ranks):
    rows = make_rows(900)
    rows[5]["prompt"] = "unicode ✓ \u00e9\u4e2d 🧬 across the parts"
    sim = sim_factory("--count", n_ranks, "--time-scale", 0, "--shuffle-choices")
    res = run_mpiswarm(n_ranks, _args(tmp_path, rows, sim, "out.h5", "--batch-size", 16))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["attrs"]["layout"] == "virtual" and data["attrs"]["complete"] and data["attrs"]["n_ok"] == 900
    assert len(_parts(tmp_path)) == n_ranks
    with h5py.File(tmp_path / "out.h5") as f:
        assert all(f[name].is_virtual for name in ("prompt", "completion", "ok", "rank", "latency_s"))
        sources = {s.file_name for s in f["completion"].virtual_sources()}
    assert sources == {f"out.h5.parts/{name}" for name in _parts(tmp_path)}
    assert set(np.unique(data["rank"])) <= set(range(n_ranks))

    # export --format h5: the same rows in one self-contained file, which travels alone
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    res = run_mpiswarm(1, ["export", tmp_path / "out.h5", "--format", "h5", "-o", alone / "one.h5"])
    assert res.returncode == 0, res.stderr
    copy = read_results(alone / "one.h5")
    assert copy["attrs"]["layout"] == "single"
    for name in ("prompt", "completion", "custom_id", "ok", "rank", "error"):
        assert np.array_equal(copy[name], data[name]), name
    with h5py.File(alone / "one.h5") as f:
        assert not f["completion"].is_virtual


def test_one_part_a_node(tmp_path, sim_factory):
    """--parts-per node: each node's first rank writes its node's rows (one node here: one part)."""
    rows = make_rows(500)
    sim = sim_factory("--count", 4, "--time-scale", 0)
    res = run_mpiswarm(4, _args(tmp_path, rows, sim, "out.h5", "--parts-per", "node", "--batch-size", 16))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert len(_parts(tmp_path)) == 1 and data["attrs"]["params"]["parts_per"] == "node"
    assert len(set(data["rank"].tolist())) > 1  # served by several ranks, written by one


def test_missing_part_is_an_error_naming_it(tmp_path, sim_factory):
    rows = make_rows(50)
    sim = sim_factory("--count", 2, "--time-scale", 0)
    assert run_mpiswarm(2, _args(tmp_path, rows, sim)).returncode == 0
    os.rename(tmp_path / "out.h5", tmp_path / "renamed.h5")  # beside its parts: still whole
    assert run_mpiswarm(1, ["inspect", tmp_path / "renamed.h5"]).returncode == 0
    (tmp_path / "elsewhere").mkdir()
    os.rename(tmp_path / "renamed.h5", tmp_path / "elsewhere" / "moved.h5")  # without its parts directory
    res = run_mpiswarm(1, ["inspect", tmp_path / "elsewhere" / "moved.h5"])
    assert res.returncode == 2
    assert "moved.h5: part file out.h5.parts/" in res.stderr and "is missing" in res.stderr


def test_layout_change_and_rerun_leave_only_the_current_parts(tmp_path, sim_factory):
    rows = make_rows(120)
    sim = sim_factory("--count", 2, "--time-scale", 0)
    assert run_mpiswarm(2, _args(tmp_path, rows, sim)).returncode == 0
    first = _parts(tmp_path)
    assert run_mpiswarm(2, _args(tmp_path, rows, sim)).returncode == 0  # a new run: new parts, old ones gone
    second = _parts(tmp_path)
    assert len(second) == 2 and not set(first) & set(second)
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)
    single = [a for a in _args(tmp_path, rows, sim) if a not in ("--layout", "virtual")]
    assert run_mpiswarm(2, single).returncode == 0
    assert not (tmp_path / "out.h5.parts").exists()
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)


def test_time_limit_then_resume_in_the_virtual_layout(tmp_path, sim_factory):
    rows = make_rows(300)
    sim = sim_factory("--count", 2, "--time-scale", 1.0, "--max-num-seqs", 4)
    args = _args(tmp_path, rows, sim, "out.h5", "--batch-size", 8, "--time-limit", 1.5)
    res = run_mpiswarm(2, args)
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    partial = read_results(tmp_path / "out.h5")
    assert partial["attrs"]["layout"] == "virtual" and not partial["attrs"]["complete"]
    answered = int(partial["ok"].sum())
    assert 0 < answered < 300
    assert all("not answered" in e for e in partial["error"][~partial["ok"]])
    for _ in range(20):  # the same command, again and again, finishes the job
        res = run_mpiswarm(2, args)
        if res.returncode != EXIT_RESUME:
            break
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["attrs"]["n_resumed"] >= answered and len(_parts(tmp_path)) == 2


def test_virtual_layout_with_a_reduction_and_more_ranks_than_prompts(tmp_path, sim_factory):
    rows = make_rows(3)
    sim = sim_factory("--count", 4, "--time-scale", 0)
    res = run_mpiswarm(4, _args(tmp_path, rows, sim, "out.h5", "--reduce-prompt", "Combine: {responses}",
                                "--fanin", 2))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert len(_parts(tmp_path)) == 3  # the rank with no rows writes no part
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["reduce"]["final"].attrs["ok"]


def test_an_ensemble_in_the_virtual_layout_votes_as_in_the_single_one(tmp_path, sim_factory):
    """--repeat: every writer counts the votes of its block (a prompt's rows may span two
    blocks), rank 0 merges them: the same group ``ensemble`` as the single layout writes."""
    rows = [{"prompt": f"Q{i}: gene or cell?", "custom_id": f"q{i}"} for i in range(7)]
    sim = sim_factory("--count", 3, "--time-scale", 0)
    got = {}
    for layout in ("single", "virtual"):
        out = tmp_path / f"{layout}.h5"
        res = run_mpiswarm(3, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                               "--max-tokens", 8, "--temperature", 0.9, "--repeat", 3, "--layout", layout])
        assert res.returncode == 0, res.stdout + res.stderr
        with h5py.File(out) as f:
            got[layout] = {name: f["ensemble"][name][()].tolist() for name in f["ensemble"]}
            assert f["completion"].is_virtual == (layout == "virtual") and f["completion"].shape == (7 * 3 * 3,)
        assert "majority votes" in res.stdout
    assert got["virtual"] == got["single"]
    assert sum(got["virtual"]["n_votes"]) > 0
