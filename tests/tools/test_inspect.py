"""``mpiswarm inspect`` on result files of real mpiexec jobs: every number equals the file's."""
from __future__ import annotations

import json
import subprocess
from collections import Counter
import sys

import h5py
import numpy as np
import pytest

from mpiswarm.cli import main
from mpiswarm.inspect import build_report
from mpiswarm.errors import ErrorKind
from mpiswarm.store import is_unanswered, read_results

from ..conftest import subprocess_env


def inspect_cli(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpiswarm", "inspect", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


def expected_counts(data) -> dict:
    unanswered = sum(1 for ok, e in zip(data["ok"], data["error_kind"]) if not ok and is_unanswered(e))
    return {"total": len(data["ok"]), "ok": int(data["ok"].sum()),
            "failed": int((~data["ok"]).sum()) - unanswered, "not_answered": unanswered}


def test_text_report_of_a_run_with_a_failed_prompt(results):
    run = results["plain"]
    res = inspect_cli(run.path)
    assert res.returncode == 0, res.stderr
    data = read_results(run.path)
    out = res.stdout
    assert f"mpiswarm result file {run.path}" in out
    assert "prompts      120: 119 ok, 1 failed, 0 not answered" in out
    assert "complete     yes" in out and "resume" not in out
    assert f"error        1 x {data['error'][37]}" in out and data["error"][37].startswith("HTTP 400")
    ranks = data["ranks"]
    assert (f"tokens       prompt {int(ranks['prompt_tokens'].sum()):,}, "
            f"completion {int(ranks['completion_tokens'].sum()):,}") in out
    assert "model        sim-model (api completions), 4 ranks" in out
    assert "sampling     max_tokens=8" in out and "batch_size=10" in out
    table = out[out.index("  ranks\n"):].splitlines()[2:6]  # after the header line
    for r, line in enumerate(table):
        cells = line.split()
        assert cells[0] == str(r) and int(cells[2]) == ranks["n_prompts"][r] and int(cells[4]) == ranks["n_calls"][r]
        assert cells[-1] == ranks["endpoint"][r]
    assert "phases       read" in out and "total" in out


def test_json_report_equals_the_file(results):
    for name in ("plain", "n2", "chat", "incomplete", "strong_4"):
        run = results[name]
        res = inspect_cli(run.path, "--json")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        data = read_results(run.path)
        a, ranks = data["attrs"], data["ranks"]
        assert report["prompts"] == expected_counts(data)
        assert report["complete"] == a["complete"] and report["model"] == a["model"] == "sim-model"
        assert report["attempt"] == a["attempt"] and report["params"] == a["params"]
        assert report["n_ranks"] == a["n_ranks"] == run.ranks
        assert report["tokens"]["prompt"] == int(ranks["prompt_tokens"].sum())
        assert report["tokens"]["completion"] == int(ranks["completion_tokens"].sum())
        assert report["times_s"] == {p: a[f"time_{p}_s"] for p in
                                     ("read", "health", "scatter", "requests", "gather", "write", "total")}
        done = report["prompts"]["ok"] + report["prompts"]["failed"]
        assert report["throughput"]["prompts_per_s"] == pytest.approx(done / a["time_requests_s"])
        assert report["throughput"]["prompts_per_s_end_to_end"] == pytest.approx(done / a["time_total_s"])
        for field in ("n_prompts", "n_calls", "n_retries", "n_failovers", "t_requests"):
            values = ranks[field].astype(float)
            b = report["balance"][field]
            assert (b["min"], b["max"], b["argmax"]) == (values.min(), values.max(), int(values.argmax()))
            assert b["mean"] == pytest.approx(values.mean())
            if values.mean() > 0:
                assert b["max_over_mean"] == pytest.approx(values.max() / values.mean())
        assert report["ranks"]["n_prompts"] == ranks["n_prompts"].tolist()
        assert report["ranks"]["endpoint"] == ranks["endpoint"].tolist()
        errors = Counter(e for e in data["error"].tolist() if e)
        assert [(e["message"], e["count"]) for e in report["errors"]] == errors.most_common(5)
        assert report["distinct_errors"] == len(errors)
        reasons = data["finish_reason"][data["ok"]].ravel().tolist()
        assert report["finish_reasons"] == {k: reasons.count(k) for k in set(reasons)}


def test_incomplete_file_shows_as_incomplete(results):
    run = results["incomplete"]
    data = read_results(run.path)
    assert not data["attrs"]["complete"]
    counts = expected_counts(data)
    assert counts["not_answered"] > 0 and counts["ok"] > 0
    res = inspect_cli(run.path)
    assert res.returncode == 0, res.stderr
    assert (f"complete     NO: {counts['not_answered']} prompts not answered; run the same command again to "
            "resume") in res.stdout
    assert f"300: {counts['ok']} ok, {counts['failed']} failed, {counts['not_answered']} not answered" in res.stdout
    report = json.loads(inspect_cli(run.path, "--json").stdout)
    assert report["complete"] is False and report["resume"] == "run the same command again to resume"
    assert report["errors"][0]["message"].startswith("not answered")


def test_streamed_counts_do_not_depend_on_the_block_size(results):
    path = results["plain"].path
    assert build_report(path, chunk_rows=7) == build_report(path) == build_report(path, chunk_rows=1000)


def test_unanswered_kinds_are_recognised():
    """Rows a stopped job never finished are told by their error kind, not their message."""
    assert is_unanswered(ErrorKind.NOT_ANSWERED.label) and is_unanswered(ErrorKind.NOT_ATTEMPTED.label)
    assert not is_unanswered(ErrorKind.CONTEXT_LENGTH.label) and not is_unanswered("")


def test_many_ranks_table_left_out_unless_asked(results, capsys, monkeypatch):
    monkeypatch.setattr("mpiswarm.inspect.RANK_TABLE_LIMIT", 2)
    assert main(["inspect", str(results["plain"].path)]) == 0
    assert "ranks        4 (table left out; --ranks prints it)" in capsys.readouterr().out
    assert main(["inspect", str(results["plain"].path), "--ranks"]) == 0
    assert "request s  endpoint" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "directory", "not_hdf5", "other_hdf5"])
def test_not_a_result_file_exits_2_with_one_line(tmp_path, case):
    path = tmp_path / "x.h5"
    if case == "directory":
        path.mkdir()
    elif case == "not_hdf5":
        path.write_text('{"prompt": "a"}\n')
    elif case == "other_hdf5":
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(3)
    res = inspect_cli(path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mpiswarm: error: {path}: "), res.stderr
    assert {"missing": "no such file", "directory": "is a directory", "not_hdf5": "not HDF5",
            "other_hdf5": "no 'mpiswarm_version' attribute"}[case] in lines[0]
    assert res.stdout == "" and "Traceback" not in res.stderr
