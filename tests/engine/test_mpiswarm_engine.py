"""mpiswarm against the real engine: ``mpiexec -n N python -m mpiswarm run`` against
llama.cpp's ``llama-server`` (CPU, the tiny random-weight model), every row checked.

The reference for a row is the answer the *same* server gives to that prompt sent
alone with the same sampling parameters (rank r talks to the server on port
``base_port + r``; the ``rank`` column says which one served a row).  Greedy
answers, and seeded sampled ones, are repeatable on llama-server.

Three llama-server traits shape the runs below:

* With flash attention on (its default ``auto`` picks it on CPU) an answer depends
  on the batch it was decoded in: 0.4-0.7 % of greedy answers in a list differed
  from the same prompt sent alone in our runs.  The tests use ``exact_endpoints``,
  four shared servers with flash attention off, where no greedy answer did.
* ``usage`` of a list call counts only its *first* prompt (vLLM sums over the
  list), so the per-rank token totals mpiswarm stores in group ``ranks``
  undercount; the tests assert the values mpiswarm actually stores.
* Each HTTP worker thread of llama-server (``--threads-http``, 2 in the fixtures)
  stays with a keep-alive connection until it has been idle for 5 s, so a client
  with more open connections than worker threads stalls in steps of 5 s.  Runs
  that make several calls per rank therefore pass ``--concurrency`` 2 or less.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from mpiswarm.partition import contiguous_bounds
from mpiswarm.store import read_results

from mpiswarm.engines import tiny_gguf

from ..conftest import run_mpiswarm, write_jsonl
from ..engines_common import MODEL, alone, choices, custom_ids, get_ok
from .servers import LlamaServer, ServerGroup

#: Deadline of one ``mpiexec … mpiswarm run`` (a warm run takes a few seconds).
RUN_TIMEOUT = 90.0
#: Calls in flight per rank when a rank makes several calls: no more than the
#: fixtures' ``--threads-http 2`` (see the module docstring).
CONCURRENCY = 2

SUBJECTS = [
    "the dog", "a little house", "the war", "water and life", "the capital of France",
    "the sun and the moon", "the school", "children", "the government of the city",
    "the English language", "a computer", "the first president", "Zürich in the sun ☀",
    "café au lait", "naïve questions", "東京の天気", "Москва зимой", "the number π",
    "a party 🎉 with friends", "résumé writing", "El Niño", "Ελλάδα and its islands",
]
TEMPLATES = [
    "Tell me about {s}.", "Write a sentence about {s}.", "Why is {s} important?",
    "What do you know about {s}?", "Please describe {s} in three words.",
    "Explain how {s} works", "Where is {s}?", "Once upon a time there was {s}, and",
    "List three facts about {s}:", "Q: Who cares about {s}?\nA:",
]


# --------------------------------------------------------------------------- helpers


def make_rows(n_rows: int) -> list[dict[str, Any]]:
    """``n_rows`` varied prompts (some with unicode, a few long ones); every 9th row
    has no ``custom_id`` (mpiswarm then uses the row number)."""
    rows = []
    for i in range(n_rows):
        combo = i % (len(TEMPLATES) * len(SUBJECTS))
        prompt = TEMPLATES[combo % len(TEMPLATES)].format(s=SUBJECTS[combo // len(TEMPLATES)])
        if i >= len(TEMPLATES) * len(SUBJECTS) or i % 31 == 7:  # longer, multi-sentence prompts
            others = [SUBJECTS[(i * k) % len(SUBJECTS)] for k in (3, 5, 7)]
            prompt = f"{prompt} Compare it with {', '.join(others)}. Answer in one line, row {i}:"
        row: dict[str, Any] = {"prompt": prompt}
        if i % 9 != 4:
            row["custom_id"] = f"q{i:03d}" + ("-é" if i % 11 == 0 else "")
        rows.append(row)
    return rows


def overrides(row: dict[str, Any]) -> dict[str, Any]:
    """A row's own sampling options."""
    return {key: value for key, value in row.items()
            if key in ("max_tokens", "temperature", "top_p", "seed", "stop", "n")}


def endpoint_args(group: ServerGroup) -> list[Any]:
    return ["--model", MODEL, "--endpoint", group.endpoint_template, "--base-port", group.base_port]


def expected_ranks(n_rows: int, n_ranks: int) -> list[int]:
    """The rank of every row: contiguous slices in input order."""
    return np.repeat(np.arange(n_ranks), np.diff(contiguous_bounds(n_rows, n_ranks))).tolist()


def slot_context(server: LlamaServer) -> int:
    """A slot's context size, from ``/v1/models`` (llama-server: ``meta.n_ctx``)."""
    [card] = get_ok(server.base_url + "/models")["data"]
    return int(card["meta"]["n_ctx"])


def overlong_prompt(n_ctx: int) -> str:
    """A prompt of ``n_ctx + 89`` tokens (BOS and one "▁the" a word)."""
    return " ".join(["the"] * (n_ctx + 88))


def assert_rows_in_order(data: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """Prompts and custom_ids in input order, in the one result file of the run."""
    assert data["prompt"].tolist() == [row["prompt"] for row in rows]
    assert data["custom_id"].tolist() == custom_ids(rows)
    assert sorted(p.name for p in out.parent.iterdir()) == ["in.jsonl", out.name]


# --------------------------------------------------------------------------- 1. lists


@pytest.mark.parametrize("batch_size", [None, 16], ids=["one-call-per-rank", "batch-16"])
def test_four_ranks_every_row_equals_its_servers_own_answer(tmp_path: Path, exact_endpoints,
                                                            batch_size: int | None) -> None:
    n_ranks, n_rows, max_tokens = 4, 280, 8
    rows = make_rows(n_rows)
    out = tmp_path / "out.h5"
    extra = [] if batch_size is None else ["--batch-size", batch_size, "--concurrency", CONCURRENCY]
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", max_tokens,
                                 "--temperature", 0, "--schedule", "static", *extra], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{n_rows} prompts on {n_ranks} ranks: {n_rows} ok, 0 failed" in res.stdout

    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert data["rank"].tolist() == expected_ranks(n_rows, n_ranks)
    assert data["ok"].all() and (data["error"] == "").all()
    assert (data["latency_s"] > 0).all()
    params = {"max_tokens": max_tokens, "temperature": 0, "n": 1}
    singles = []
    for i, row in enumerate(rows):
        single = alone(exact_endpoints[int(data["rank"][i])], row["prompt"], params)
        singles.append(single)
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single), f"row {i}"
    assert set(data["finish_reason"]) == {"length"}  # the tiny model never ends on its own

    # A list call's usage is not per prompt: the token columns stay -1 for every row.
    assert (data["prompt_tokens"] == -1).all() and (data["completion_tokens"] == -1).all()

    ranks = data["ranks"]
    assert ranks["endpoint"].tolist() == exact_endpoints.base_urls[:n_ranks]
    assert ranks["n_prompts"].tolist() == ranks["n_ok"].tolist() == np.diff(
        contiguous_bounds(n_rows, n_ranks)).tolist()
    assert (ranks["n_failed_calls"] == 0).all()
    # llama.cpp's ``usage`` counts only the first prompt of a list (vLLM: the sum over
    # the list), and mpiswarm adds up ``usage`` per call: a rank's totals are those of
    # the first prompt of each of its calls, far below what it really processed.
    bounds = contiguous_bounds(n_rows, n_ranks)
    for r in range(n_ranks):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        firsts = range(lo, hi, batch_size or hi - lo)
        assert ranks["n_calls"][r] == len(firsts)
        assert ranks["prompt_tokens"][r] == sum(singles[i]["usage"]["prompt_tokens"] for i in firsts)
        assert ranks["completion_tokens"][r] == max_tokens * len(firsts)
        real = sum(singles[i]["usage"]["prompt_tokens"] for i in range(lo, hi))
        assert ranks["prompt_tokens"][r] < real
    # /v1/models of llama-server carries no ``max_model_len``: mpiswarm reads one slot's
    # context from the card's ``meta.n_ctx`` instead.
    assert ranks["max_model_len"].tolist() == [slot_context(exact_endpoints[0])] * n_ranks

    attrs = data["attrs"]
    assert attrs["complete"] and attrs["n_ok"] == attrs["n_prompts"] == n_rows
    assert attrs["n_ranks"] == n_ranks and attrs["model"] == MODEL


# --------------------------------------------------------------------------- 2. n and overrides


def test_dynamic_schedule_every_row_equals_its_servers_own_answer(tmp_path: Path, exact_endpoints) -> None:
    """The default (dynamic) schedule moves rows between ranks: each row still equals the
    answer of the server of the rank that served it, in input order."""
    n_ranks, n_rows = 4, 280
    rows = make_rows(n_rows)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", 8, "--temperature", 0,
                                 "--concurrency", CONCURRENCY, "--max-num-seqs", 8], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert sorted(set(data["rank"].tolist())) == list(range(n_ranks))
    assert data["ranks"]["n_calls"].sum() > n_ranks  # chunks, not one list per rank
    for i, row in enumerate(rows):
        single = alone(exact_endpoints[int(data["rank"][i])], row["prompt"],
                       {"max_tokens": 8, "temperature": 0, "n": 1})
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single), f"row {i}"


def test_virtual_layout_every_row_equals_its_servers_own_answer(tmp_path: Path, exact_endpoints) -> None:
    """--layout virtual on a real engine: each rank writes its block (rows served by any rank),
    and every row read through the virtual datasets is its server's own answer."""
    n_ranks, n_rows = 4, 160
    rows = make_rows(n_rows)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", 8, "--temperature", 0,
                                 "--concurrency", CONCURRENCY, "--max-num-seqs", 8, "--layout", "virtual"],
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["attrs"]["layout"] == "virtual"
    assert len(list((tmp_path / "out.h5.parts").iterdir())) == n_ranks
    assert data["prompt"].tolist() == [row["prompt"] for row in rows]
    assert data["custom_id"].tolist() == custom_ids(rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.h5", "out.h5.parts"]
    for i, row in enumerate(rows):
        single = alone(exact_endpoints[int(data["rank"][i])], row["prompt"],
                       {"max_tokens": 8, "temperature": 0, "n": 1})
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single), f"row {i}"


def test_n2_and_per_row_overrides_equal_the_servers_own_answers(tmp_path: Path,
                                                                exact_endpoints) -> None:
    """Sampled answers (``--n 2``, seeds, temperatures) and greedy rows with stop
    strings.  One call in flight per rank keeps each list alone on its server, as
    the single prompts of the reference are (two lists decoded together changed one
    sampled answer in 1,200 in our runs, even with flash attention off)."""
    group = exact_endpoints
    n_ranks, n_rows = 2, 40
    base = {"max_tokens": 10, "temperature": 0.8, "seed": 11, "n": 2}
    rows = make_rows(n_rows)
    for i, row in enumerate(rows):
        if i % 5 == 1:
            row["max_tokens"] = 3
        elif i % 5 == 2:
            row["seed"] = 101
        elif i % 10 == 3:
            row.update(temperature=1.3, seed=7)
        elif i % 10 == 4:
            # Greedy, with a stop string taken from the row's own greedy answer.
            greedy = choices(alone(group[0], row["prompt"], {**base, "temperature": 0, "n": 1}))
            word = next(w for w in greedy[0][0].split(" ")[3:] if len(w) > 1)
            row.update(temperature=0, n=1, stop=[" " + word, "\u2603"])  # vLLM refuses greedy n > 1
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(group), "--n", 2, "--max-tokens", 10,
                                 "--temperature", 0.8, "--seed", 11, "--concurrency", 1, "--schedule", "static"],
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr

    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert data["completion"].shape == data["finish_reason"].shape == (n_rows, 2)
    assert data["ok"].all() and data["rank"].tolist() == expected_ranks(n_rows, n_ranks)
    for i, row in enumerate(rows):
        params = {**base, **overrides(row)}
        expected = choices(alone(group[int(data["rank"][i])], row["prompt"], params))
        got = list(zip(data["completion"][i].tolist(), data["finish_reason"][i].tolist()))
        assert got[:params["n"]] == expected, f"row {i} {params}"
    sampled = [i for i, row in enumerate(rows) if row.get("temperature", 0.8) > 0]
    assert all(data["completion"][i][0] != data["completion"][i][1] for i in sampled)
    assert set(data["finish_reason"].ravel()) - {""} == {"stop", "length"}  # "": an n = 1 row's second column
    # One call per group of a rank's rows that share their overrides (none,
    # max_tokens, seed, temperature and seed, each stop string).
    bounds = contiguous_bounds(n_rows, n_ranks)
    groups = [[json.dumps(overrides(row), sort_keys=True) for row in rows[lo:hi]]
              for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert data["ranks"]["n_calls"].tolist() == [len(set(keys)) for keys in groups]
    # A row alone in its call gets that call's usage, which llama.cpp counts for the
    # prompt and the *first* of its n copies only (vLLM: all copies).  Rows that
    # shared a list get -1.
    for i, row in enumerate(rows):
        r = int(data["rank"][i])
        keys = groups[r]
        if keys.count(keys[i - bounds[r]]) == 1:
            usage = alone(group[r], row["prompt"], {**base, **overrides(row)})["usage"]
            assert (data["prompt_tokens"][i], data["completion_tokens"][i]) == (
                usage["prompt_tokens"], usage["completion_tokens"]), f"row {i}"
        else:
            assert (data["prompt_tokens"][i], data["completion_tokens"][i]) == (-1, -1), f"row {i}"


# --------------------------------------------------------------------------- 3. chat


def test_chat_api_every_row_equals_the_servers_own_chat_answer(tmp_path: Path,
                                                               exact_endpoints) -> None:
    n_ranks, n_rows, max_tokens = 4, 48, 8
    rows = make_rows(n_rows)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--api", "chat",
                                 "--max-tokens", max_tokens, "--temperature", 0,
                                 "--concurrency", CONCURRENCY, "--schedule", "static"], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr

    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert data["ok"].all() and data["rank"].tolist() == expected_ranks(n_rows, n_ranks)
    for i, row in enumerate(rows):
        server = exact_endpoints[int(data["rank"][i])]
        single = alone(server, row["prompt"], {"max_tokens": max_tokens, "temperature": 0, "n": 1}, chat=True)
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single, chat=True), \
            f"row {i}"
        # One prompt a call: the usage is the row's own.
        assert data["prompt_tokens"][i] == single["usage"]["prompt_tokens"]
        assert data["completion_tokens"][i] == single["usage"]["completion_tokens"] == max_tokens
    per_rank = np.diff(contiguous_bounds(n_rows, n_ranks)).tolist()
    assert data["ranks"]["n_calls"].tolist() == per_rank
    assert data["ranks"]["completion_tokens"].tolist() == [max_tokens * k for k in per_rank]


def test_prompt_format_makes_completion_lists_answer_as_chat_does(tmp_path: Path, exact_endpoints) -> None:
    """``--prompt-format`` set to the model's own chat template (mpiswarm/engines/tiny_gguf.py's): batched
    ``/v1/completions`` lists get, row by row, the answer the server's chat endpoint gives."""
    n_ranks, n_rows, max_tokens = 2, 24, 8
    rows = make_rows(n_rows)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", max_tokens, "--temperature", 0,
                                 "--prompt-format", r"<|user|>\n{prompt}<|end|>\n<|assistant|>\n",
                                 "--concurrency", CONCURRENCY, "--schedule", "static"], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["ok"].all()
    assert data["prompt"].tolist() == [f"<|user|>\n{r['prompt']}<|end|>\n<|assistant|>\n" for r in rows]
    assert data["ranks"]["n_calls"].tolist() == [1] * n_ranks  # one list a rank, not a call a prompt
    for i, row in enumerate(rows):
        server = exact_endpoints[int(data["rank"][i])]
        single = alone(server, row["prompt"], {"max_tokens": max_tokens, "temperature": 0, "n": 1}, chat=True)
        assert [(data["completion"][i], data["finish_reason"][i])] == choices(single, chat=True), f"row {i}"


# --------------------------------------------------------------------------- 4. over-long prompts


def test_an_overlong_prompt_in_a_call_of_its_own_fails_alone(tmp_path: Path,
                                                             exact_endpoints) -> None:
    """One prompt a call (``--batch-size 1``): only the over-long prompt fails, with
    llama-server's own message (its 400 body is ``{"error": {...}}``, not vLLM's)."""
    n_ctx = slot_context(exact_endpoints[0])
    assert n_ctx == tiny_gguf.CONTEXT_LENGTH == 512  # 2048 of context over 4 slots
    n_ranks, n_rows, bad = 2, 10, 3
    rows = make_rows(n_rows)
    rows[bad]["prompt"] = overlong_prompt(n_ctx)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", 8,
                                 "--temperature", 0, "--batch-size", 1, "--schedule", "static",
                                 "--concurrency", CONCURRENCY], timeout=RUN_TIMEOUT)
    assert res.returncode == 3, res.stdout + res.stderr

    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert np.flatnonzero(~data["ok"]).tolist() == [bad]
    assert data["error"][bad] == (f"HTTP 400: request ({n_ctx + 89} tokens) exceeds the available "
                                  f"context size ({n_ctx} tokens), try increasing it")
    assert data["completion"][bad] == "" and data["finish_reason"][bad] == ""
    for i, row in enumerate(rows):
        if i != bad:
            single = alone(exact_endpoints[int(data["rank"][i])], row["prompt"],
                           {"max_tokens": 8, "temperature": 0, "n": 1})
            assert [(data["completion"][i], data["finish_reason"][i])] == choices(single)
            # One prompt a call: usage is per row.
            assert data["prompt_tokens"][i] == single["usage"]["prompt_tokens"]
    assert data["attrs"]["n_ok"] == n_rows - 1 and data["attrs"]["complete"]
    assert data["ranks"]["n_failed_calls"].tolist() == [1, 0]


def test_an_overlong_prompt_inside_a_list_fails_only_itself(tmp_path: Path,
                                                            exact_endpoints) -> None:
    """llama-server fails the whole list with HTTP 400 when one prompt exceeds a slot's
    context; mpiswarm should isolate that prompt and answer all the others."""
    n_ctx = slot_context(exact_endpoints[1])
    assert n_ctx == tiny_gguf.CONTEXT_LENGTH == 512
    n_ranks, n_rows, bad = 2, 24, 17  # row 17 is inside rank 1's list of 12
    rows = make_rows(n_rows)
    rows[bad]["prompt"] = overlong_prompt(n_ctx)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                                 *endpoint_args(exact_endpoints), "--max-tokens", 8,
                                 "--temperature", 0, "--concurrency", CONCURRENCY], timeout=RUN_TIMEOUT)
    assert res.returncode == 3, res.stdout + res.stderr
    assert f"{n_rows - 1} ok, 1 failed" in res.stdout

    data = read_results(out)
    assert_rows_in_order(data, rows, out)
    assert np.flatnonzero(~data["ok"]).tolist() == [bad], data["error"][~data["ok"]][:3]
    error = data["error"][bad]
    assert "context" in error and str(n_ctx) in error, error
    assert data["completion"][bad] == ""
    for i, row in enumerate(rows):
        if i != bad:
            single = alone(exact_endpoints[int(data["rank"][i])], row["prompt"],
                           {"max_tokens": 8, "temperature": 0, "n": 1})
            assert [(data["completion"][i], data["finish_reason"][i])] == choices(single), \
                f"row {i}"
            assert data["error"][i] == ""
    assert data["attrs"]["n_ok"] == n_rows - 1 and data["attrs"]["complete"]


# --------------------------------------------------------------------------- 5. tree reduction


def read_reduce_group(path: Path) -> dict:
    """Group ``reduce`` of a result file: ``level_L`` -> {dataset: list}, ``final`` -> str."""
    with h5py.File(path, "r") as f:
        assert "reduce" in f, f"no group 'reduce' in {path}: {sorted(f)}"
        group = f["reduce"]
        out = {"final": group["final"].asstr()[()], "final_ok": bool(group["final"].attrs["ok"])}
        for name, level in group.items():
            if isinstance(level, h5py.Group):
                out[name] = {k: (ds.asstr()[()] if ds.dtype == object else ds[()]).tolist()
                             for k, ds in level.items()}
        return out


def test_tree_reduction_final_answer_is_the_same_at_2_and_4_ranks(tmp_path: Path,
                                                                  exact_endpoints) -> None:
    """``--reduce-prompt TEMPLATE --fanin K``: the answers are reduced K at a time, level
    by level, into group ``reduce`` (``level_1``, ``level_2``, … and ``final``).  The
    tree is grouped by input order, so with a deterministic engine it does not depend
    on the number of ranks; each combined answer is what the server that made it
    answers to the stored supervisor prompt alone."""
    n_rows, fanin, max_tokens = 48, 4, 8
    rows = make_rows(n_rows)
    template = "Summarize these answers in one line:\\n{responses}\\nSummary:"
    reduced = {}
    for n_ranks in (2, 4):
        out = tmp_path / f"ranks-{n_ranks}" / "out.h5"
        out.parent.mkdir()
        res = run_mpiswarm(n_ranks, ["run", write_jsonl(out.parent / "in.jsonl", rows), "-o", out,
                                     *endpoint_args(exact_endpoints), "--max-tokens", max_tokens,
                                     "--temperature", 0, "--reduce-prompt", template,
                                     "--fanin", fanin, "--concurrency", CONCURRENCY], timeout=RUN_TIMEOUT)
        assert res.returncode == 0, res.stdout + res.stderr

        data = read_results(out)
        assert_rows_in_order(data, rows, out)
        assert data["ok"].all()
        group = read_reduce_group(out)
        levels = sorted((k for k in group if re.fullmatch(r"level_\d+", k)), key=lambda k: int(k[6:]))
        assert [len(group[k]["text"]) for k in levels] == [12, 3, 1]  # 48 answers, fan-in 4
        answers = data["completion"].tolist()
        first = group["level_1"]
        for g in range(12):  # level 1 combines the map answers in input order
            inputs = "\n---\n".join(answers[g * fanin:(g + 1) * fanin])
            assert first["prompt"][g] == f"Summarize these answers in one line:\n{inputs}\nSummary:"
        for name in levels:
            level = group[name]
            assert all(level["ok"]), level["error"]
            for prompt, text, rank in zip(level["prompt"], level["text"], level["rank"]):
                single = alone(exact_endpoints[rank], prompt, {"max_tokens": max_tokens, "temperature": 0, "n": 1})
                assert text == choices(single)[0][0]
        assert group["final_ok"] and group["final"] == group[levels[-1]]["text"][0]
        reduced[n_ranks] = {k: group[k]["text"] for k in levels} | {"final": group["final"]}
    assert reduced[2] == reduced[4]


def test_broadcast_ensemble_each_answer_is_its_servers_own_for_its_seed(tmp_path: Path, exact_endpoints) -> None:
    """``--repeat 3`` at 2 ranks with sampling: every prompt goes to both servers three times,
    each repetition with its own seed, and each answer is what that server gives alone
    for that seed; different seeds give different samples."""
    rows = make_rows(2)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out,
                           *endpoint_args(exact_endpoints), "--repeat", 3, "--seed", 40, "--temperature", 1.0,
                           "--max-tokens", 6, "--concurrency", CONCURRENCY], timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    with h5py.File(out, "r") as f:
        seeds = f["ensemble/seed"][()].tolist()
        votes = f["ensemble/n_valid"][()].tolist()
    assert data["ok"].all() and votes == [6, 6]
    texts = []
    for row in range(12):
        prompt, rank = rows[row // 6]["prompt"], int(data["rank"][row])
        assert (rank, seeds[row]) == ((row % 6) // 3, 40 + row % 6)
        single = alone(exact_endpoints[rank], prompt, {"max_tokens": 6, "temperature": 1.0, "seed": seeds[row]})
        assert data["completion"][row] == choices(single)[0][0], f"row {row}"
        texts.append(data["completion"][row])
    assert len(set(texts[:6])) > 1  # the seeds make an ensemble, not six copies
