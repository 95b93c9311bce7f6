"""Result files from real ``mpiexec -n N python -m mpiswarm run`` jobs against simulated
endpoints, made once per test session for the result-file tools' tests."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..conftest import run_mpiswarm, write_jsonl

MODEL = "sim-model"
TRICKY = ["plain", 'with "quotes", commas, and; semicolons', "two\nlines\r\nand a CR", "tab\there",
          "unicode: протеин 細胞 🧬 α-helix", "line\u2028separator and next\x85line", "=1+2 (a formula?)",
          ""]


def make_rows(n: int, prefix: str = "id") -> list[dict]:
    return [{"custom_id": f"{prefix}-{i:04d}", "prompt": f"Q{i}: {TRICKY[i % len(TRICKY)]}"} for i in range(n)]


@dataclass
class Run:
    """One finished job: its result file, input rows, exit code and rank count."""

    path: Path
    rows: list
    code: int
    ranks: int


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    """name -> :class:`Run`: ``plain`` (4 ranks, one over-long prompt failing with HTTP 400:
    exit 3), ``n2`` (2 completions a prompt), ``chat`` (per-prompt usage), ``incomplete``
    (``--time-limit`` on a slow simulator: exit 75, complete = False), ``strong_1/2/4`` (one
    input at 1, 2 and 4 ranks) and ``weak_1/weak_4`` (30 prompts a rank, with ``strong_2``)."""
    from mpiswarm.sim import start_process

    root = tmp_path_factory.mktemp("results")
    runs: dict[str, Run] = {}
    fast = start_process(["--count", "4", "--time-scale", "0", "--max-model-len", "256", "--shuffle-choices"])
    slow = start_process(["--count", "2", "--time-scale", "1.0", "--max-num-seqs", "4"])
    try:
        def job(name, ranks, rows, sim, *extra, expect=0):
            d = root / name
            d.mkdir()
            inp = write_jsonl(d / "in.jsonl", rows)
            out = d / f"{name}.h5"
            res = run_mpiswarm(ranks, ["run", inp, "-o", out, "--model", MODEL, "--endpoint",
                                       "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0], "-q", *extra])
            assert res.returncode == expect, (name, res.stdout, res.stderr)
            runs[name] = Run(out, rows, res.returncode, ranks)

        plain = make_rows(120)
        plain[37]["prompt"] = "long " * 400  # ~500 tokens > max_model_len 256: HTTP 400, alone
        job("plain", 4, plain, fast, "--max-tokens", 8, "--batch-size", 10, expect=3)
        job("n2", 2, make_rows(40), fast, "--n", 2, "--seed", 3, "--max-tokens", 6)
        job("chat", 2, make_rows(20), fast, "--api", "chat", "--max-tokens", 5)
        job("incomplete", 2, make_rows(300), slow, "--max-tokens", 8, "--batch-size", 8, "--time-limit", 1.5,
            expect=75)
        strong = make_rows(60, "s")
        for r in (1, 2, 4):
            job(f"strong_{r}", r, strong, fast, "--max-tokens", 8, "--batch-size", 10)
        job("weak_1", 1, make_rows(30, "w"), fast, "--max-tokens", 8, "--batch-size", 10)
        job("weak_4", 4, make_rows(120, "w"), fast, "--max-tokens", 8, "--batch-size", 10)
    finally:
        fast.stop()
        slow.stop()
    return runs


def read_jsonl(text: str) -> list[dict]:
    lines = text.split("\n")
    assert lines[-1] == ""
    return [json.loads(line) for line in lines[:-1]]
