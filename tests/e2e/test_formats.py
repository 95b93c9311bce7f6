"""End to end (tier 3): map templates, prompt formats, reasoning answers and ``--max-tokens auto``,
from the command line and through :class:`~mpiswarm.runner.RunConfig`, at 1, 2 and 4 ranks,
against simulated endpoints on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mpiswarm.budget import TokenBudget
from mpiswarm.export import export
from mpiswarm.launch import find_mpiexec
from mpiswarm.sim import chat_prompt, expected_completion, split_reasoning
from mpiswarm.store import read_results

from ..conftest import finish, run_mpiswarm, sim_counter, subprocess_env, write_jsonl

MODEL = "sim-model"
TEMPLATE = "Analyze gene {gene} in {organism}"
# as a shell passes it in single quotes: backslash-n, not a newline
FORMAT_ARG = r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n"
FORMAT = "<|user|>\n{prompt}<|end|>\n<|assistant|>\n"
ORGANISMS = ["human", "mouse", "Danio rerio", "酵母", "E. coli 🦠"]


def gene_rows(n_rows: int) -> list[dict]:
    rows = []
    for i in range(n_rows):
        row = {"gene": f"G{i:03d}", "organism": ORGANISMS[i % len(ORGANISMS)]}
        if i % 4 == 1:
            row["custom_id"] = f"gene-{i}"
        if i % 6 == 2:
            row["prompt"] = "ignored: the template does not use {prompt}"
        if i % 5 == 3:
            row["max_tokens"] = 3
        rows.append(row)
    return rows


def write_with_blank_lines(path, rows: list[dict]):
    """Rows with a blank line after every third (row numbers and line numbers differ)."""
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row))
        if i % 3 == 2:
            lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def parallel_reader(monkeypatch):
    """Every rank reads a part of the input, however small (mpiswarm.read)."""
    monkeypatch.setenv("MPISWARM_PARALLEL_READ_MIN_BYTES", "0")


def endpoint_args(sim):
    return ["--model", MODEL, "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0]]


def assert_nothing_sent(res, tmp_path, sims, message, inputs=("in.jsonl",)):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(inputs)  # no output, no run directory
    assert [sim_counter(u) for sim in sims for u in sim.urls] == [0] * sum(len(s.urls) for s in sims)


# --------------------------------------------------------------------------- map templates


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_map_template_and_prompt_format(tmp_path, sim_factory, n_ranks):
    """Each prompt is built from its row's fields, put into the chat format, and stored as sent;
    rows without a prompt are fine; per-row overrides still apply."""
    rows = gene_rows(45)
    sim = sim_factory("--count", n_ranks, "--time-scale", 0, "--shuffle-choices")
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_with_blank_lines(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(sim), "--max-tokens", 20, "--seed", 11,
                                 "--template", TEMPLATE, "--prompt-format", FORMAT_ARG,
                                 "--max-num-seqs", 4, "--concurrency", 2])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    sent = [FORMAT.replace("{prompt}", f"Analyze gene {r['gene']} in {r['organism']}") for r in rows]
    assert data["prompt"].tolist() == sent
    assert data["custom_id"].tolist() == [r.get("custom_id", str(i)) for i, r in enumerate(rows)]
    assert data["ok"].all()
    for i, row in enumerate(rows):
        text, reason, _ = expected_completion(sent[i], seed=11, max_tokens=row.get("max_tokens", 20))
        assert (data["completion"][i], data["finish_reason"][i]) == (text, reason), f"row {i}"
    assert "reasoning" not in data  # no answer had any: no dataset
    params = data["attrs"]["params"]
    assert params["template"] == TEMPLATE and params["prompt_format"] == FORMAT
    assert sum(sim_counter(u) for u in sim.urls) == data["ranks"]["n_calls"].sum()


def test_map_template_missing_field_names_the_line(tmp_path, sim_factory):
    rows = gene_rows(10)
    del rows[7]["organism"]  # row 7 is on line 10: blank lines follow rows 2 and 5
    sim = sim_factory("--count", 2, "--time-scale", 0)
    path = write_with_blank_lines(tmp_path / "in.jsonl", rows)
    assert path.read_text().splitlines()[9] == json.dumps(rows[7])
    res = run_mpiswarm(2, ["run", path, "-o", tmp_path / "out.h5", *endpoint_args(sim), "--template", TEMPLATE])
    assert_nothing_sent(res, tmp_path, [sim], "in.jsonl:10: this row has no field {organism} for the template")


@pytest.mark.parametrize("args, message", [
    (["--prompt-format", "<|user|>{text}"], "--prompt-format: unknown placeholder {text}"),
    (["--prompt-format", "<|user|>"], "--prompt-format: must contain {prompt}"),
    (["--max-tokens-cap", 64], "--max-tokens-cap needs --max-tokens auto"),
])
def test_bad_prompt_options_exit_2(tmp_path, sim_factory, args, message):
    sim = sim_factory("--count", 2, "--time-scale", 0)
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}])
    res = run_mpiswarm(2, ["run", path, "-o", tmp_path / "out.h5", *endpoint_args(sim), *args])
    assert_nothing_sent(res, tmp_path, [sim], message)


# --------------------------------------------------------------------------- reasoning answers

# reasoning mode of each rank's endpoint, by rank count
REASONING_LAYOUTS = {1: ["split"], 2: ["none", "only"], 4: ["only", "none", "split", "none"]}


@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_chat_reasoning_is_stored_beside_the_answer(tmp_path, sim_factory, n_ranks):
    """Endpoints of a reasoning model (mixed with plain ones): the reasoning lands in dataset
    ``reasoning``; an answer that is all reasoning (content null) is answered, not failed."""
    layout = REASONING_LAYOUTS[n_ranks]
    field = "reasoning" if n_ranks == 1 else "reasoning_content"
    sims = {mode: sim_factory("--count", 1, "--time-scale", 0, "--reasoning", mode, "--reasoning-field", field)
            for mode in sorted(set(layout))}
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"127.0.0.1\t{sims[mode].ports[0]}\n" for mode in layout))
    rows = [{"prompt": f"Question {i}: {ORGANISMS[i % 5]}?"} for i in range(36)]
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                                 "--hostfile", hostfile, "--api", "chat", "--max-tokens", 30,
                                 "--concurrency", 4])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "36 ok, 0 failed" in res.stdout
    data = read_results(out)
    assert data["ok"].all() and (data["error"] == "").all()
    assert data["reasoning"].shape == data["completion"].shape
    modes_seen = set()
    for i, row in enumerate(rows):
        mode = layout[int(data["rank"][i])]
        modes_seen.add(mode)
        text, reason, _ = expected_completion(chat_prompt([{"role": "user", "content": row["prompt"]}]),
                                              max_tokens=30)
        thought, content = split_reasoning(text, mode)
        assert (data["completion"][i], data["reasoning"][i], data["finish_reason"][i]) == (
            content or "", thought or "", reason), f"row {i} ({mode})"
    assert modes_seen == set(layout)  # every kind of endpoint answered some rows
    if "only" in layout:
        assert (data["completion"] == "").sum() >= 1
    exported = tmp_path / "out.jsonl"
    export(out, "jsonl", str(exported))
    records = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert [r["reasoning"] for r in records] == data["reasoning"].tolist()


# --------------------------------------------------------------------------- --max-tokens auto

CONTEXT = 120


def budget_rows() -> list[dict]:
    """Prompts from 6 to ~300 bytes (room from ~96 down to a few tokens), and one too long."""
    rows = [{"prompt": f"p{i:02d} " + "word " * i} for i in range(60)]
    rows.insert(17, {"prompt": "far too long " * 30, "custom_id": "long"})  # ~130 tokens estimated
    return rows


@pytest.mark.parametrize("n_ranks, cap, schedule", [(1, None, "static"), (2, 40, "dynamic"), (4, None, "static")])
def test_max_tokens_auto_fits_each_prompt(tmp_path, sim_factory, n_ranks, cap, schedule):
    rows = budget_rows()
    sim = sim_factory("--count", n_ranks, "--time-scale", 0, "--max-model-len", CONTEXT, "--shuffle-choices")
    out = tmp_path / "out.h5"
    extra = ["--max-tokens-cap", cap] if cap else []
    # dynamic: a small engine so that most rows arrive in chunks requested during the run
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(sim), "--max-tokens", "auto", *extra, "--schedule", schedule,
                                 "--max-num-seqs", 4, "--concurrency", 1])
    assert res.returncode == 3, res.stdout + res.stderr
    data = read_results(out)
    assert np.flatnonzero(~data["ok"]).tolist() == [17]
    assert data["error"][17].startswith("prompt too long for --max-tokens auto: about 130 tokens")
    assert f"max_model_len {CONTEXT}" in data["error"][17]
    # nothing was refused by the endpoint: no 400, no bisection
    assert data["ranks"]["n_failed_calls"].sum() == 0 and data["ranks"]["n_bisections"].sum() == 0
    assert data["ranks"]["max_model_len"].tolist() == [CONTEXT] * n_ranks
    budget = TokenBudget(CONTEXT, cap)
    budgets = {}
    for i, row in enumerate(rows):
        if i == 17:
            continue
        budgets[i] = budget.for_prompt(row["prompt"])
        assert 1 <= budgets[i] <= (cap or CONTEXT)
        text, reason, _ = expected_completion(row["prompt"], max_tokens=budgets[i])
        assert (data["completion"][i], data["finish_reason"][i]) == (text, reason), f"row {i}"
    assert "length" in set(data["finish_reason"]) and len(set(budgets.values())) >= 5
    if cap:
        assert max(budgets.values()) == cap
    if schedule == "static":  # rows of one budget share a call: one call per budget per rank
        for r in range(n_ranks):
            mine = {budgets[i] for i in np.flatnonzero(data["rank"] == r).tolist() if i != 17}
            assert data["ranks"]["n_calls"][r] == len(mine)
    assert data["attrs"]["params"]["max_tokens_auto"] and data["attrs"]["params"]["max_tokens_cap"] == cap
    assert "max_tokens" not in data["attrs"]["params"]["sampling"]


def test_max_tokens_auto_without_max_model_len_exits_2(tmp_path, sim_factory):
    sim = sim_factory("--count", 2, "--time-scale", 0, "--hide-max-model-len")
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    res = run_mpiswarm(2, ["run", path, "-o", tmp_path / "out.h5", *endpoint_args(sim), "--max-tokens", "auto"])
    assert_nothing_sent(res, tmp_path, [sim], f"--max-tokens auto: endpoint {sim.urls[0]} does not advertise "
                                               "max_model_len on /v1/models")


# --------------------------------------------------------------------------- through RunConfig

SCRIPT = textwrap.dedent("""
    import json, sys
    import mpiswarm
    from mpiswarm.client import ClientOptions
    from mpiswarm.runner import RunConfig, run

    spec = json.loads(sys.argv[1])
    config = RunConfig.build(input=spec["input"], output=spec["output"],
                             client=ClientOptions(model="sim-model", api=spec["api"]),
                             sampling={"seed": 5}, hostfile=spec["hostfile"], quiet=True,
                             template=spec["template"], prompt_format=spec["prompt_format"],
                             max_tokens_auto=True, max_tokens_cap=spec["cap"])
    code = run(config)
    sys.stdout.write(f"exit {code}" + chr(10))
    # the Python API on the same rows: scatter_gather builds the same RunConfig from keywords
    rows = [json.loads(line) for line in open(spec["input"], encoding="utf-8") if line.strip()]
    records = mpiswarm.scatter_gather(rows, model="sim-model", api=spec["api"], seed=5, hostfile=spec["hostfile"],
                                      template=spec["template"], prompt_format=spec["prompt_format"],
                                      max_tokens="auto", max_tokens_cap=spec["cap"], workdir=spec["workdir"])
    if records is not None:
        with open(spec["records"], "w", encoding="utf-8") as fh:
            json.dump(records, fh)
    sys.exit(code)
""")


@pytest.mark.parametrize("n_ranks, api", [(1, "completions"), (2, "chat"), (4, "completions")])
def test_run_config_template_format_auto_and_reasoning(tmp_path, sim_factory, n_ranks, api):
    """The Python API's way in: a RunConfig with a map template, a prompt format with real
    newlines, --max-tokens auto with a cap; on chat, a reasoning model's answers."""
    sim = sim_factory("--count", n_ranks, "--time-scale", 0, "--max-model-len", 90, "--reasoning", "split")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"127.0.0.1\t{p}\n" for p in sim.ports))
    rows = gene_rows(24)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.h5"
    spec = {"input": str(write_with_blank_lines(tmp_path / "in.jsonl", rows)), "output": str(out), "api": api,
            "hostfile": str(hostfile), "template": TEMPLATE, "prompt_format": FORMAT, "cap": 24,
            "records": str(tmp_path / "records.json"), "workdir": str(tmp_path)}
    proc = subprocess.Popen([find_mpiexec(), "-n", str(n_ranks), sys.executable, str(script), json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                            start_new_session=True)
    res = finish(proc, timeout=120)
    assert res.returncode == 0 and res.stdout.split().count("0") == n_ranks, res.stdout + res.stderr
    data = read_results(out)
    sent = [FORMAT.replace("{prompt}", f"Analyze gene {r['gene']} in {r['organism']}") for r in rows]
    assert data["prompt"].tolist() == sent and data["ok"].all()
    budget = TokenBudget(90, 24)
    for i, row in enumerate(rows):
        max_tokens = row.get("max_tokens") or budget.for_prompt(sent[i])
        prompt = sent[i] if api == "completions" else chat_prompt([{"role": "user", "content": sent[i]}])
        text, reason, _ = expected_completion(prompt, seed=5, max_tokens=max_tokens)
        if api == "chat":
            thought, text = split_reasoning(text, "split")
            assert data["reasoning"][i] == (thought or "")
        assert (data["completion"][i] or None if api == "chat" else data["completion"][i],
                data["finish_reason"][i]) == (text, reason), f"row {i}"
    assert ("reasoning" in data) == (api == "chat")  # /v1/completions carries no reasoning
    assert data["attrs"]["params"]["template"] == TEMPLATE
    records = json.loads((tmp_path / "records.json").read_text(encoding="utf-8"))
    assert [r["prompt"] for r in records] == sent
    assert [(r["completion"], r["finish_reason"], r["ok"]) for r in records] == list(
        zip(data["completion"].tolist(), data["finish_reason"].tolist(), data["ok"].tolist()))


def test_tree_reduction_sends_its_supervisor_prompts_in_the_prompt_format(tmp_path, sim_factory):
    """--prompt-format applies to every prompt sent, the reduction's too; --max-tokens auto
    sizes the map phase and the reduction uses the cap."""
    from mpiswarm.tree import group_inputs, level_sizes, supervisor_prompt

    from .test_reduce import read_reduce

    sim = sim_factory("--count", 2, "--time-scale", 0, "--max-model-len", 400)
    rows = gene_rows(12)
    reduce_template = "Level {level}, group {group}: combine\n{responses}\nInto one:"
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_with_blank_lines(tmp_path / "in.jsonl", rows), "-o", out,
                           *endpoint_args(sim), "--seed", 3, "--template", TEMPLATE, "--prompt-format", FORMAT_ARG,
                           "--max-tokens", "auto", "--max-tokens-cap", 10, "--reduce-prompt", reduce_template,
                           "--fanin", 4])
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    budget = TokenBudget(400, 10)
    texts = []
    for i, row in enumerate(rows):
        max_tokens = row.get("max_tokens") or budget.for_prompt(data["prompt"][i])
        texts.append(expected_completion(data["prompt"][i], seed=3, max_tokens=max_tokens)[0])
    assert data["completion"].tolist() == texts
    got = read_reduce(out)
    for level, size in enumerate(level_sizes(len(texts), 4), 1):
        prompts = [FORMAT.replace("{prompt}", supervisor_prompt(reduce_template,
                                                                [texts[i] for i in group_inputs(g, 4, len(texts))],
                                                                "\n---\n", level, g))
                   for g in range(size)]
        assert got[f"level_{level}"]["prompt"] == prompts, f"level {level}"
        texts = [expected_completion(p, seed=3, max_tokens=10)[0] for p in prompts]  # the cap
        assert got[f"level_{level}"]["text"] == texts, f"level {level}"
    assert got["final"] == texts[0]
