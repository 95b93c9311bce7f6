"""Long answers end to end (issue 16, item 4): answers of 64 KB across 4 ranks with a small
byte limit set for the test (``MPISWARM_MAX_MESSAGE_BYTES``), so the scatter, the gather and
the virtual layout's redistribution go in many rounds; every row must come back whole."""
from __future__ import annotations

import pytest

from mpiswarm.sim import expected_completion
from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, write_jsonl
from .test_run import endpoint_args, make_rows

ANSWER_BYTES = 64 << 10
LIMIT = 512 << 10  # a rank's share of a gather round at 4 ranks: 128 KB, one answer


@pytest.mark.parametrize("layout", ["single", "virtual"])
def test_answers_of_64_kb_in_rounds_sized_by_bytes(tmp_path, sim_factory, monkeypatch, layout):
    monkeypatch.setenv("MPISWARM_MAX_MESSAGE_BYTES", str(LIMIT))
    monkeypatch.setenv("MPISWARM_PARALLEL_READ_MIN_BYTES", "0")  # the reader's merge in rounds too
    rows = make_rows(48)
    for i in range(0, 48, 5):  # some prompts long enough to take a round of the scatter each
        rows[i]["prompt"] += " " + "x" * (100 << 10)
    sim = sim_factory("--count", 4, "--time-scale", 0, "--answer-bytes", ANSWER_BYTES, "--max-model-len", 100000)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--max-tokens", 8, "--batch-size", 2, "--layout", layout])
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["prompt"].tolist() == [r["prompt"] for r in rows]
    assert data["ok"].all()
    for i, row in enumerate(rows):
        text, finish, _ = expected_completion(row["prompt"], max_tokens=8, min_bytes=ANSWER_BYTES)
        assert len(text.encode()) >= ANSWER_BYTES
        assert (data["completion"][i], data["finish_reason"][i]) == (text, finish), f"row {i}"
