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


def openai_batch_chat_file(k: int) -> list[dict]:
    """OpenAI Batch chat requests as its own examples write them: system + user messages, a
    response_format on some, logprobs on some, other options here and there."""
    rows = []
    for i in range(k):
        body = {"model": MODEL, "messages": [{"role": "system", "content": "You are a biologist."},
                                             {"role": "user", "content": f"Describe protein {i}."}],
                "max_tokens": 12}
        if i % 4 == 1:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": {
                "type": "object", "properties": {"name": {"type": "string"}, "length": {"type": "integer"}},
                "required": ["name", "length"]}}}
        if i % 4 == 2:
            body.update(logprobs=True, top_logprobs=2)
        if i % 4 == 3:
            body.update(top_k=5, repetition_penalty=1.1, seed=i)
        rows.append({"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return rows


def test_an_openai_batch_chat_file_runs_unchanged_and_exports_one_line_a_request(tmp_path, sim_factory):
    from mpiswarm.export import export

    rows = openai_batch_chat_file(40)
    sim = sim_factory("--count", 4, "--time-scale", 0.02)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "batch.jsonl", rows), "-o", out, "--model", MODEL,
                           "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0], "--progress", "none"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning" not in res.stderr  # every key of every body is a request field mpiswarm knows
    lines = tmp_path / "out.jsonl"
    assert export(out, "openai-batch", str(lines)) == len(rows)
    got = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [g["custom_id"] for g in got] == [r["custom_id"] for r in rows]
    for row, line in zip(rows, got):
        body, reply = row["body"], line["response"]["body"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert reply["object"] == "chat.completion" and len(reply["choices"]) == 1
        choice = reply["choices"][0]
        if "response_format" in body:
            doc = json.loads(choice["message"]["content"])  # held to its schema
            assert isinstance(doc["name"], str) and isinstance(doc["length"], int)
        if body.get("logprobs"):
            content = choice["logprobs"]["content"]
            assert [e["token"] for e in content][0] == choice["message"]["content"].split(" ")[0]
            assert all(len(e["top_logprobs"]) == 2 for e in content)
        else:
            assert choice["logprobs"] is None


@pytest.mark.parametrize("row, words", [
    ({"prompt": "x", "top_k": "five"}, "'top_k' must be an integer"),
    ({"prompt": "x", "structured_outputs": {"choice": ["a"], "regex": "a"}}, "'structured_outputs'"),
    ({"prompt": "x", "logprobs": 50}, "'logprobs'"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "'top_logprobs' needs 'logprobs' true"),
    ({"url": "/v1/completions", "body": {"prompt": "x", "top_kk": 3}}, "unknown option 'top_kk'; known: max_tokens"),
])
def test_a_bad_option_sends_nothing(tmp_path, sim_factory, row, words):
    sim = sim_factory("--count", 1, "--time-scale", 0.0)
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", [{"prompt": "fine"}, row]), "-o", tmp_path / "o.h5",
                           "--model", MODEL, "--endpoint", sim.urls[0]])
    assert res.returncode == 2, res.stdout + res.stderr
    assert "in.jsonl:2: " in res.stderr and words in res.stderr, res.stderr
    assert sim_counter(sim.urls[0]) == 0


def test_a_misspelt_option_in_a_plain_row_is_reported_once(tmp_path, sim_factory):
    sim = sim_factory("--count", 1, "--time-scale", 0.0)
    rows = [{"prompt": f"p{i}", "temprature": 0.1, "gene": f"G{i}"} for i in range(5)] + [{"prompt": "q", "gene": "TP53"}]
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "o.h5", "--model", MODEL,
                           "--endpoint", sim.urls[0], "--progress", "none"])
    assert res.returncode == 0, res.stdout + res.stderr
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "'temprature' (5 rows)" in warnings[0] and "'gene' (6 rows)" in warnings[0]
    res = run_mpiswarm(1, ["run", tmp_path / "in.jsonl", "-o", tmp_path / "t.h5", "--model", MODEL, "--endpoint",
                           sim.urls[0], "--template", "{prompt} {gene}", "--progress", "none", "--restart"])
    assert "'gene'" not in res.stderr and "'temprature' (5 rows)" in res.stderr  # a field the template uses is not
