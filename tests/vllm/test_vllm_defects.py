"""The defects vLLM's own server found in mpiswarm (issue "Real vLLM in the loop"), each held
by a run against the real server.  (The fourth, NULs in a reduction's texts, is
``test_vllm_runs.py::test_tree_reduction_of_answers_with_nuls``.)

* Sampling vLLM refuses (greedy ``n > 1``, ``top_p`` outside (0, 1], ``temperature``
  outside [0, 2], ...) is refused before anything is sent: exit 2, one line naming the
  option or the row, no output.
* A ``--model`` the endpoint does not serve fails at the health check, fast: exit 4 naming
  the rank, the URL and the names it serves.
* No call carries more prompts than vLLM accepts (``VLLM_MAX_COMPLETION_PROMPTS``, 1024 by
  default), and a 400 naming the limit splits the list by that limit.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mpiswarm.store import read_results

from ..conftest import run_mpiswarm
from .test_vllm_runs import (MODEL, RUN_TIMEOUT, alone, choices, completion_calls, make_rows,
                             metrics, run_args)


def refused(res, tmp_path: Path) -> str:
    """The one line of an input error: exit 2, no output file."""
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.h5").exists()
    return lines[0]


@pytest.mark.parametrize("options, named", [
    (["--n", 2, "--temperature", 0], "--n"),
    (["--top-p", 0], "--top-p"),
    (["--temperature", 100], "--temperature"),
    (["--max-tokens", 0], "--max-tokens"),
], ids=["greedy-n2", "top-p-0", "temperature-100", "max-tokens-0"])
def test_sampling_vllm_refuses_is_refused_before_anything_is_sent(tmp_path: Path, vllm, options,
                                                                   named: str) -> None:
    rows = make_rows(20)
    sent_before = completion_calls(vllm)
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, *options), timeout=RUN_TIMEOUT)
    line = refused(res, tmp_path)
    assert named in line, line
    assert completion_calls(vllm) == sent_before  # nothing reached the server


def test_a_row_asking_for_greedy_n2_is_refused_naming_its_line(tmp_path: Path, vllm) -> None:
    rows = make_rows(20)
    rows[13].update(n=2, temperature=0)
    sent_before = completion_calls(vllm)
    res = run_mpiswarm(2, run_args(vllm, rows, tmp_path, "--temperature", 0.5), timeout=RUN_TIMEOUT)
    line = refused(res, tmp_path)
    assert "in.jsonl:14" in line and "n" in line and "greedy" in line, line
    assert completion_calls(vllm) == sent_before


def test_a_model_the_server_does_not_serve_fails_at_the_health_check(tmp_path: Path, vllm) -> None:
    rows = make_rows(20)
    sent_before = completion_calls(vllm)
    args = run_args(vllm, rows, tmp_path)
    args[args.index("--model") + 1] = "llama-wrong"
    started = time.monotonic()
    res = run_mpiswarm(2, args, timeout=RUN_TIMEOUT)
    took = time.monotonic() - started
    assert res.returncode == 4, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if "unavailable" in line]
    assert len(lines) == 2, res.stdout + res.stderr  # one a rank
    for rank, line in enumerate(lines):
        assert line.startswith(f"mpiswarm: rank {rank} on ") and line.endswith(
            f"endpoint {vllm.base_url} unavailable: it does not serve --model 'llama-wrong' (it serves: {MODEL})")
    assert completion_calls(vllm) == sent_before
    assert took < 60, f"the health check took {took:.0f} s to see a wrong model"


def test_no_call_carries_more_prompts_than_vllm_accepts(tmp_path: Path, vllm) -> None:
    """3,000 prompts on one rank, ``--schedule static`` (a rank's whole slice in one list
    before): three calls of at most 1,024 prompts, none refused."""
    n_rows = 3000
    rows = [{"prompt": f"{row['prompt']} #{i}"} for i, row in enumerate(make_rows(n_rows))]
    before = metrics(vllm)
    res = run_mpiswarm(1, run_args(vllm, rows, tmp_path, "--max-tokens", 1, "--temperature", 0,
                                   "--schedule", "static"), timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    after = metrics(vllm)
    ranks = read_results(tmp_path / "out.h5")["ranks"]
    assert ranks["n_calls"][0] == 3 and ranks["n_failed_calls"][0] == 0
    assert after["http:/v1/completions"] - before["http:/v1/completions"] == 3
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == n_rows


def test_a_400_naming_the_list_limit_splits_by_that_limit(tmp_path: Path, vllm) -> None:
    """``--max-prompts-per-call 3000`` above the server's 1,024: the one refused call is split
    by vLLM's stated limit (1,024 + 1,024 + 952), not halved down again and again."""
    n_rows = 3000
    rows = [{"prompt": f"{row['prompt']} #{i}"} for i, row in enumerate(make_rows(n_rows))]
    before = metrics(vllm)
    res = run_mpiswarm(1, run_args(vllm, rows, tmp_path, "--max-tokens", 1, "--temperature", 0,
                                   "--schedule", "static", "--max-prompts-per-call", 3000),
                       timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    after = metrics(vllm)
    data = read_results(tmp_path / "out.h5")
    assert data["ok"].all()
    calls = after["http:/v1/completions"] - before["http:/v1/completions"]
    assert calls == 4, calls  # one refused list of 3,000, then 3 lists of at most 1,024
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == n_rows
    for i in (0, 1023, 1024, 2999):
        expected = choices(alone(vllm, rows[i]["prompt"], {"max_tokens": 1, "temperature": 0}))
        assert [(data["completion"][i], data["finish_reason"][i])] == expected
