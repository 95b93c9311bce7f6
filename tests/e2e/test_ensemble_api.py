"""End to end: broadcast ensembles (``--repeat``) and the Python API, at 1, 2 and 4 ranks,
against simulated endpoints whose answers the test computes itself."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import h5py
import pytest

from mpiswarm.aggregate import normalize
from mpiswarm.launch import find_mpiexec
from mpiswarm.sim import expected_completion
from mpiswarm.store import read_results
from mpiswarm.tree import group_inputs, supervisor_prompt

from ..conftest import finish, run_mpiswarm, subprocess_env, write_jsonl
from .test_run import endpoint_args

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def sim4():
    from mpiswarm.sim import start_process

    proc = start_process(["--count", "4", "--time-scale", "0.01"])
    yield proc
    proc.stop()


def majority(texts):
    counts = Counter(normalize(t) for t in texts)
    key, n = counts.most_common(1)[0]
    return next(t for t in texts if normalize(t) == key).strip(), n / len(texts)


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_ensemble_every_endpoint_k_times_with_its_seeds(tmp_path, sim4, n_ranks):
    prompts = ["Is water wet?", "Name a colour", "Pick a word"]
    k = 4
    out = tmp_path / "ens.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in prompts]),
                                 "-o", out, *endpoint_args(sim4), "--repeat", k, "--seed", 100,
                                 "--max-tokens", 1, "--progress", "none"])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert len(data["prompt"]) == len(prompts) * n_ranks * k
    with h5py.File(out) as f:
        ens = {name: ds[()] for name, ds in f["ensemble"].items()}
    row = 0
    for p, prompt in enumerate(prompts):
        texts = []
        for r in range(n_ranks):
            for rep in range(k):
                seed = 100 + r * k + rep
                assert (data["prompt"][row], data["rank"][row]) == (prompt, r)
                assert (ens["source_row"][row], ens["repeat"][row], ens["seed"][row]) == (p, rep, seed)
                assert data["custom_id"][row] == f"{p}/rank-{r}/rep-{rep}"
                assert data["completion"][row] == expected_completion(prompt, seed=seed, j=0, max_tokens=1)[0]
                texts.append(data["completion"][row])
                row += 1
        answer, share = majority(texts)
        assert ens["vote"][p].decode() == answer and ens["vote_share"][p] == pytest.approx(share)
        assert ens["n_valid"][p] == n_ranks * k
        assert f"prompt {p}: " in res.stdout and repr(answer) in res.stdout


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_python_api_scatter_gather_broadcast_and_tree_reduce(tmp_path, sim4, n_ranks):
    out = tmp_path / "api.json"
    cmd = [find_mpiexec(), "-n", str(n_ranks), sys.executable, str(HERE / "api_job.py"), str(out), str(sim4.ports[0])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=tmp_path, start_new_session=True)
    res = finish(proc, 120)
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    prompts = [f"Q{i}: gene {i}" for i in range(20)]
    answers = [expected_completion(p, seed=2, j=0, max_tokens=6)[0] for p in prompts]
    assert [r["completion"] for r in got["records"]] == answers
    assert [r["prompt"] for r in got["records"]] == prompts and all(r["ok"] for r in got["records"])
    assert {r["rank"] for r in got["records"]} == set(range(n_ranks))
    assert len(got["ensemble"]) == 3 * n_ranks
    assert [(r["rank"], r["repeat"], r["seed"]) for r in got["ensemble"]] == [
        (r, k, r * 3 + k) for r in range(n_ranks) for k in range(3)]
    answer, share = majority([r["completion"] for r in got["ensemble"]])
    assert got["vote"] == [answer, pytest.approx(share), 3 * n_ranks]
    tree = got["tree"]
    leaves = [expected_completion(p, j=0, max_tokens=6)[0] for p in prompts]
    level1 = [supervisor_prompt("Combine {level}/{group}: {responses}", [leaves[i] for i in group_inputs(g, 4, 20)],
                                "\n---\n", 1, g) for g in range(5)]
    assert [len(level["text"]) for level in tree["levels"]] == [5, 2, 1]
    assert tree["levels"][0]["prompt"] == level1
    assert tree["ok"] and tree["final"] == tree["levels"][-1]["text"][0]
    assert "no_such_option" in got["bad"]
    assert list(tmp_path.iterdir()) == [out]  # the API's temporary directories are gone


def test_the_readme_api_example_runs(tmp_path, sim4):
    cmd = [find_mpiexec(), "-n", "2", sys.executable, str(HERE.parents[1] / "tools" / "api_example.py"),
           "--base-port", str(sim4.ports[0])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=tmp_path, start_new_session=True)
    res = finish(proc, 120)
    assert res.returncode == 0, res.stderr
    assert "tree levels [2, 1]; final: " in res.stdout and "ensemble: " in res.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_ensemble_reduced_with_the_same_tree(tmp_path, sim4):
    """``--repeat`` with ``--reduce-prompt``: the ensemble's answers, in row order, are level 0."""
    out = tmp_path / "ens.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Say one word"}]), "-o", out,
                           *endpoint_args(sim4), "--repeat", 4, "--max-tokens", 2, "--progress", "none",
                           "--reduce-prompt", "Pick the best of:\\n{responses}", "--fanin", 4])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    with h5py.File(out) as f:
        prompts = [f["reduce/level_1/prompt"].asstr()[g] for g in range(2)]
        assert f["reduce"].attrs["level_sizes"] == "[2, 1]"
        assert f["reduce/level_1/rank"][()].tolist() == [0, 1]  # each rank combines its own answers
    for g in range(2):
        assert prompts[g] == "Pick the best of:\n" + "\n---\n".join(data["completion"][4 * g:4 * g + 4])
