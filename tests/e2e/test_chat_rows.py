"""Chat rows end to end: ``mpiexec -n 4 mpiswarm run`` on a file that mixes conversations,
OpenAI Batch chat requests and prompts, against simulators with and without
``/v1/chat/completions/batch`` (tier 3)."""
from __future__ import annotations

import json

import pytest

from mpiswarm.sim import chat_prompt, expected_completion
from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, sim_counter, write_jsonl

MODEL = "sim-model"


def mixed_rows(k: int) -> list[dict]:
    rows = []
    for i in range(k):
        conversation = [{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": f"What does gene {i} do? ☃"}]
        if i % 3 == 0:
            rows.append({"custom_id": f"p{i}", "prompt": f"Gene {i} is"})
        elif i % 3 == 1:
            rows.append({"custom_id": f"c{i}", "messages": conversation, "max_tokens": 12})
        else:
            rows.append({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": conversation[1:], "seed": i}})
    return rows


def expected(row: dict, max_tokens: int) -> str:
    """The simulator's answer for the row sent alone (a chat row: /v1/chat/completions)."""
    source = row.get("body", row)
    if "messages" in source:
        prompt = chat_prompt(source["messages"])
    else:
        prompt = source["prompt"]
    return expected_completion(prompt, seed=source.get("seed"), max_tokens=source.get("max_tokens", max_tokens))[0]


@pytest.mark.parametrize("batch_route", [True, False])
def test_mixed_file_with_and_without_the_batch_route(tmp_path, sim_factory, batch_route):
    rows = mixed_rows(90)
    sim = sim_factory("--count", 4, "--time-scale", 0.02, "--shuffle-choices", *([] if batch_route else ["--no-chat-batch"]))
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                           "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0],
                           "--max-tokens", 20, "--progress", "none"])
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["ok"].all() and data["custom_id"].tolist() == [r["custom_id"] for r in rows]
    assert data["completion"].tolist() == [expected(r, 20) for r in rows]
    for row, prompt in zip(rows, data["prompt"].tolist()):  # a chat row's prompt: its conversation as JSON
        source = row.get("body", row)
        assert (json.loads(prompt) == source["messages"]) if "messages" in source else prompt == source["prompt"]
    ranks = data["ranks"]
    if batch_route:
        assert ranks["n_chat_batch_calls"].sum() > 0 and ranks["n_chat_calls"].sum() == 0
        assert ranks["n_chat_batch_calls"].sum() < 40  # lists of conversations (30 rows have seeds of their own)
    else:
        assert ranks["n_chat_batch_calls"].sum() == 0 and ranks["n_chat_calls"].sum() == 60


def test_api_chat_uses_the_batch_route_and_single_gives_the_same_file(tmp_path, sim_factory):
    rows = [{"custom_id": str(i), "prompt": f"Tell me about cell {i}"} for i in range(64)]
    sim = sim_factory("--count", 2, "--time-scale", 0.0)
    files = {}
    for route in ("auto", "single"):
        out = tmp_path / f"{route}.h5"
        res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                               "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0], "--api", "chat",
                               "--max-tokens", 8, "--chat-route", route, "--progress", "none"])
        assert res.returncode == 0, res.stdout + res.stderr
        files[route] = read_results(out)
    assert files["auto"]["completion"].tolist() == files["single"]["completion"].tolist()
    assert files["auto"]["completion"].tolist() == [
        expected_completion(chat_prompt([{"role": "user", "content": r["prompt"]}]), max_tokens=8)[0] for r in rows]
    assert files["auto"]["ranks"]["n_chat_batch_calls"].sum() > 0 and files["single"]["ranks"]["n_chat_calls"].sum() == 64


def test_a_bad_chat_row_sends_nothing(tmp_path, sim_factory):
    rows = mixed_rows(10) + [{"custom_id": "bad", "messages": [{"role": "user"}]}]
    sim = sim_factory("--count", 2, "--time-scale", 0.0)
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "out.h5",
                           "--model", MODEL, "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0]])
    assert res.returncode == 2, res.stdout + res.stderr
    assert "in.jsonl:11: messages[0]: 'content' must be a string or a list of text parts" in res.stderr
    assert not (tmp_path / "out.h5").exists()
    assert all(sim_counter(url) == 0 for url in sim.urls)


def test_a_model_per_row_grouped_into_calls_and_checked_at_the_start(tmp_path, sim_factory):
    """A row's ``model`` (a LoRA adapter the server serves, here the simulator's --lora) overrides
    --model for that row; rows share calls only with rows of their model; a model no endpoint
    serves stops the job at the health check (exit 4), nothing sent."""
    from mpiswarm.inspect import build_report

    rows = [{"custom_id": str(i), "prompt": f"Cell {i}", **({"model": "sql-lora"} if i % 4 == 0 else {})}
            for i in range(40)]
    sim = sim_factory("--count", 2, "--time-scale", 0.0, "--lora", "sql-lora")
    out = tmp_path / "out.h5"
    args = ["--model", MODEL, "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0], "--max-tokens", 6]
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *args])
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["ok"].all()
    assert build_report(out)["rows_per_model"] == {MODEL: 30, "sql-lora": 10}
    bad = rows + [{"custom_id": "x", "prompt": "p", "model": "no-such-adapter"}]
    before = sum(sim_counter(url) for url in sim.urls)
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "bad.jsonl", bad), "-o", tmp_path / "bad.h5", *args])
    assert res.returncode == 4, res.stdout + res.stderr
    assert "it does not serve the rows' model 'no-such-adapter'" in res.stdout
    assert sum(sim_counter(url) for url in sim.urls) == before  # nothing sent
