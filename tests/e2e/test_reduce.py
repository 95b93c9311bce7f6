"""End to end: ``mpiswarm run … --reduce-prompt T --fanin K`` against simulated endpoints.

The simulator's answers are a pure function of the prompt, so the test computes the whole
tree itself — every supervisor prompt and every combined answer — and checks the file
level by level, at 1, 2 and 4 ranks.
"""
from __future__ import annotations

import json

import h5py
import pytest

from mpiswarm.budget import MARGIN_TOKENS
from mpiswarm.sim import expected_completion
from mpiswarm.sim.model import count_tokens
from mpiswarm.tree import MARKER, group_inputs, level_sizes, supervisor_prompt

from ..conftest import run_mpiswarm, write_jsonl
from .test_run import endpoint_args, make_rows

TEMPLATE = "Level {level}, group {group}: combine\n{responses}\nInto one:"


def read_reduce(path):
    """Group ``reduce``: {"attrs", "final", "final_ok", "level_L": {dataset: list}}."""
    with h5py.File(path, "r") as f:
        g = f["reduce"]
        out = {"attrs": dict(g.attrs), "final": g["final"].asstr()[()], "final_ok": bool(g["final"].attrs["ok"])}
        for name, level in g.items():
            if isinstance(level, h5py.Group):
                out[name] = {k: (ds.asstr()[()] if ds.dtype == object else ds[()]).tolist() for k, ds in level.items()}
        return out


def expected_tree(answers, ok, fanin, seed, max_tokens):
    """Every level's (prompts, texts) as the simulator answers them."""
    levels, texts, good = [], list(answers), list(ok)
    for level, size in enumerate(level_sizes(len(texts), fanin), 1):
        prompts = []
        for g in range(size):
            got = [texts[i] for i in group_inputs(g, fanin, len(texts)) if good[i]]
            prompts.append(supervisor_prompt(TEMPLATE, got, "\n---\n", level, g))
        texts = [expected_completion(p, seed=seed, j=0, max_tokens=max_tokens)[0] for p in prompts]
        good = [True] * size
        levels.append((prompts, texts))
    return levels


@pytest.fixture(scope="module")
def sim4():
    from mpiswarm.sim import start_process

    proc = start_process(["--count", "4", "--time-scale", "0.01", "--jitter", "0.05"])
    yield proc
    proc.stop()


def test_64_answers_fan_in_4_same_tree_at_1_2_and_4_ranks(tmp_path, sim4):
    """The issue's case: levels of 16, 4 and 1, the final answer identical on any rank count,
    each level exactly what the simulator answers to the supervisor prompts."""
    rows = make_rows(64)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    finals = {}
    for n_ranks in (1, 2, 4):
        out = tmp_path / f"out{n_ranks}.h5"
        res = run_mpiswarm(n_ranks, ["run", src, "-o", out, *endpoint_args(sim4), "--seed", 3, "--max-tokens", 12,
                                     "--reduce-prompt", TEMPLATE.replace("\n", "\\n"), "--fanin", 4,
                                     "--reduce-max-tokens", 20, "--progress", "none"])
        assert res.returncode == 0, res.stderr
        got = read_reduce(out)
        assert sorted(k for k in got if k.startswith("level_")) == ["level_1", "level_2", "level_3"]
        assert [len(got[f"level_{k}"]["text"]) for k in (1, 2, 3)] == [16, 4, 1]
        answers = [expected_completion(r["prompt"], seed=3, j=0, max_tokens=12)[0] for r in rows]
        for k, (prompts, texts) in enumerate(expected_tree(answers, [True] * 64, 4, 3, 20), 1):
            level = got[f"level_{k}"]
            assert level["prompt"] == prompts, f"level {k}"
            assert level["text"] == texts, f"level {k}"
            assert all(level["ok"]) and level["n_left_out"] == [0] * len(texts)
        assert got["final"] == got["level_3"]["text"][0] and got["final_ok"]
        assert got["attrs"]["level_sizes"] == "[16, 4, 1]"
        assert f"final answer:\n{got['final']}" in res.stdout
        report = run_mpiswarm(1, ["inspect", out, "--json"])
        tree = json.loads(report.stdout)["reduce"]
        assert (tree["level_sizes"], tree["final"], tree["final_ok"]) == ([16, 4, 1], got["final"], True)
        finals[n_ranks] = got
    assert finals[1]["final"] == finals[2]["final"] == finals[4]["final"]


def test_failed_answers_are_left_out_and_counted(tmp_path, sim_factory):
    """Prompts too long for the model fail in the map phase; their groups are combined from
    the rest, and a group whose inputs all failed fails without a call."""
    rows = make_rows(24)
    bad = {0, 1, 2, 9}  # group 0 (fan-in 3) loses all three; group 3 loses one
    for i in bad:
        rows[i]["prompt"] = f"too long {i} " + "word " * 600
    sim = sim_factory("--count", 2, "--time-scale", 0, "--max-model-len", 512)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--max-tokens", 8, "--reduce-prompt", TEMPLATE, "--fanin", 3, "--progress", "none"])
    assert res.returncode == 3, res.stderr  # some prompts failed
    got = read_reduce(out)
    level1 = got["level_1"]
    assert level1["n_left_out"] == [3, 0, 0, 1, 0, 0, 0, 0]
    assert level1["ok"][0] is False and level1["error"][0] == "every input of this group failed"
    assert level1["prompt"][0] == ""
    ok = [i not in bad for i in range(24)]
    answers = [expected_completion(r["prompt"], j=0, max_tokens=8)[0] if ok[i] else "" for i, r in enumerate(rows)]
    levels = expected_tree(answers, ok, 3, None, 8)
    assert level1["prompt"][1:] == levels[0][0][1:]
    assert got["final_ok"] and "failed inputs left out" in res.stdout


def test_groups_too_long_for_the_context_are_shortened_visibly(tmp_path, sim_factory):
    """Long answers, a small context: each supervisor prompt is cut to fit, at word
    boundaries with the marker, and nothing fails."""
    sim = sim_factory("--count", 2, "--time-scale", 0, "--max-model-len", 300)
    rows = make_rows(32)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--max-tokens", 48, "--reduce-prompt", "Combine:\\n{responses}\\nSummary:",
                           "--fanin", 8, "--progress", "none"])
    assert res.returncode == 0, res.stderr
    got = read_reduce(out)
    budget = 300 - 48 - MARGIN_TOKENS
    prompts = got["level_1"]["prompt"] + got["level_2"]["prompt"]
    assert all(count_tokens(p) <= budget for p in prompts)
    assert any(got["level_1"]["shortened"])
    marker_head = MARKER.split("{")[0]
    for p, short in zip(got["level_1"]["prompt"], got["level_1"]["shortened"]):
        assert (marker_head in p) == short
    assert got["final_ok"] and all(got["level_1"]["ok"])


@pytest.mark.parametrize("args, message", [
    (["--reduce-prompt", "no placeholder"], "must contain {responses}"),
    (["--reduce-prompt", "{responses} {nope}"], "unknown placeholder {nope}"),
    (["--reduce-prompt", "{responses}", "--fanin", "1"], "must be >= 2"),
])
def test_bad_reduce_options_are_usage_errors(tmp_path, args, message):
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(3))
    res = run_mpiswarm(1, ["run", src, "-o", tmp_path / "o.h5", "--model", "m", *args])
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("layout", ["single", "virtual"])
def test_answers_with_nuls_reduce_and_vote_in_both_layouts(tmp_path, sim_factory, layout):
    """Issue 12, defect 1: answers holding U+0000 (``--nul-answers``) crashed rank 0 in
    ``store.write_reduce``; every text that reaches the file now follows the one NUL rule
    (U+FFFD), the answers, the reduction's prompts and texts, the final answer and the votes."""
    from mpiswarm.codec import storable

    sim = sim_factory("--count", 2, "--time-scale", 0, "--nul-answers")
    rows = make_rows(12)
    rows[3]["prompt"] += "\x00 a NUL of the user's own"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", src, "-o", out, *endpoint_args(sim), "--seed", 3, "--max-tokens", 6,
                           "--reduce-prompt", TEMPLATE.replace("\n", "\\n"), "--fanin", 4, "--reduce-max-tokens", 9,
                           "--layout", layout, "--progress", "none"])
    assert res.returncode == 0, res.stderr
    answers = [expected_completion(r["prompt"], seed=3, max_tokens=6, nul=True)[0] for r in rows]
    assert all("\x00" in a for a in answers)
    with h5py.File(out, "r") as f:
        assert f["completion"].asstr()[()].tolist() == [storable(a) for a in answers]
        assert f["prompt"].asstr()[()].tolist() == [storable(r["prompt"]) for r in rows]
    got = read_reduce(out)
    levels = []
    texts = answers
    for level, size in enumerate(level_sizes(len(texts), 4), 1):  # the tree as sent: NULs and all
        prompts = [supervisor_prompt(TEMPLATE, [texts[i] for i in group_inputs(g, 4, len(texts))], "\n---\n",
                                     level, g) for g in range(size)]
        texts = [expected_completion(p, seed=3, max_tokens=9, nul=True)[0] for p in prompts]
        levels.append((prompts, texts))
    for k, (prompts, texts) in enumerate(levels, 1):
        assert got[f"level_{k}"]["prompt"] == [storable(p) for p in prompts], f"level {k}"
        assert got[f"level_{k}"]["text"] == [storable(t) for t in texts], f"level {k}"
    assert got["final"] == storable(levels[-1][1][0]) and "\ufffd" in got["final"] and got["final_ok"]

    votes = tmp_path / "votes.h5"
    res = run_mpiswarm(2, ["run", src, "-o", votes, *endpoint_args(sim), "--max-tokens", 6, "--temperature", 0.5,
                           "--repeat", 2, "--layout", layout, "--progress", "none"])
    assert res.returncode == 0, res.stderr
    with h5py.File(votes, "r") as f:
        vote = f["ensemble/vote"].asstr()[()].tolist()
    assert len(vote) == len(rows) and all("\ufffd" in v and "\x00" not in v for v in vote)
