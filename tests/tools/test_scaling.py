"""``mpiswarm scaling``: the report's numbers are the files' numbers; mixed files are refused;
the plot is a PNG; the one-command scaling study runs."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import h5py
import pytest

from mpiswarm.cli import main
from mpiswarm.scaling import format_markdown, load_study
from mpiswarm.store import read_results

from ..conftest import REPO, subprocess_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table(markdown: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under ``heading``."""
    part = markdown[markdown.index(heading):]
    lines = [line for line in part.splitlines()[1:] if line.startswith("|")]
    rows = []
    for line in lines[2:]:
        rows.append([c.strip() for c in line.strip("|").split("|")])
        if not part[part.index(line) + len(line) + 1:].startswith("|"):
            break
    return rows


def files(results, *names):
    return [str(results[n].path) for n in names]


def test_strong_scaling_report_equals_the_files(results, tmp_path):
    paths = files(results, "strong_4", "strong_1", "strong_2")  # any order
    report, png = tmp_path / "report.md", tmp_path / "scaling.png"
    res = subprocess.run([sys.executable, "-m", "mpiswarm", "scaling", *paths, "-o", report, "--plot", png],
                         capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert res.returncode == 0, res.stderr
    md = report.read_text()
    assert "**Strong scaling**: the same 60 prompts on 1, 2, 4 ranks." in md
    assert "![throughput, efficiency and phases vs ranks](scaling.png)" in md
    attrs = {r: read_results(results[f"strong_{r}"].path)["attrs"] for r in (1, 2, 4)}
    ranks_tables = {r: read_results(results[f"strong_{r}"].path)["ranks"] for r in (1, 2, 4)}
    base = 60 / attrs[1]["time_total_s"]
    rows = table(md, "## Throughput")
    assert [row[0] for row in rows] == ["1", "2", "4"]
    for row in rows:
        r = int(row[0])
        a = attrs[r]
        thr = 60 / a["time_total_s"]
        assert row[1:6] == ["60", f"{60 / r:.0f}" if 60 % r == 0 else f"{60 / r:.1f}", f"{a['time_total_s']:.2f}",
                            f"{a['time_requests_s']:.2f}", f"{thr:,.1f}"]
        assert row[6] == f"{thr / base:.2f}" and row[7] == f"{100 * thr / base / r:.0f} %"
    for row in table(md, "## Phases"):
        a = attrs[int(row[0])]
        phases = [a[f"time_{p}_s"] for p in ("read", "health", "scatter", "requests", "gather", "write")]
        assert row[1:7] == [f"{x:.2f}" for x in phases]
        assert row[8] == f"{a['time_total_s']:.2f}"
        assert row[7] == f"{max(0.0, a['time_total_s'] - sum(phases)):.2f}"
    for row in table(md, "## Load imbalance"):
        t = ranks_tables[int(row[0])]["t_requests"]
        assert row[1:4] == [f"{t.min():.2f}", f"{t.mean():.2f}", f"{t.max():.2f}"]
        assert row[4] == str(int(t.argmax())) and row[5] == f"{t.max() / t.mean():.2f}"
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "scaling.png"]


def test_weak_scaling_detected(results):
    study = load_study(files(results, "weak_1", "strong_2", "weak_4"))
    assert study.mode == "weak" and [r.ranks for r in study.rows] == [1, 2, 4]
    assert [r.prompts_per_rank for r in study.rows] == [30, 30, 30]
    for row in study.rows:
        a = read_results(row.path)["attrs"]
        assert row.wall_s == a["time_total_s"] and row.requests_s == a["time_requests_s"]
        # weak scaling: efficiency = T(1) / T(R)
        assert row.efficiency == pytest.approx(study.rows[0].wall_s / row.wall_s)
    md = format_markdown(study)
    assert "**Weak scaling**: the same 30 prompts per rank on 1, 2, 4 ranks." in md and "T(1) / T(R)" in md


def test_json_output(results, capsys):
    assert main(["scaling", *files(results, "strong_1", "strong_2"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "strong" and [r["ranks"] for r in out["runs"]] == [1, 2]
    assert out["runs"][0]["speedup"] == 1.0 and out["runs"][1]["phases_s"]["requests"] == read_results(
        results["strong_2"].path)["attrs"]["time_requests_s"]


def altered(results, tmp_path, name, edit):
    path = tmp_path / f"{name}-altered.h5"
    shutil.copy(results[name].path, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def refused(capsys, paths, message):
    assert main(["scaling", *paths]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mpiswarm: error: ") and message in err, err
    return err


def test_mixed_files_are_refused(results, tmp_path, capsys):
    err = refused(capsys, files(results, "strong_1", "n2"), "files of different runs cannot be compared")
    assert str(results["n2"].path) in err and '"seed": 3' in err
    other_model = altered(results, tmp_path, "strong_2", lambda f: f.attrs.__setitem__("model", "other-model"))
    err = refused(capsys, files(results, "strong_1") + [other_model], "files of different runs")
    assert "model other-model" in err and "model sim-model" in err

    def change_prompt(f):
        f["prompt"][0] = "a different first prompt"

    other_input = altered(results, tmp_path, "strong_4", change_prompt)
    refused(capsys, files(results, "strong_1") + [other_input],
            "the files hold the same number of prompts but different prompts")
    refused(capsys, files(results, "strong_1", "weak_4"), "neither strong scaling")
    refused(capsys, files(results, "strong_2", "strong_2"), "two files at 2 ranks")
    refused(capsys, files(results, "incomplete"), "incomplete run (complete = False)")
    refused(capsys, [str(tmp_path / "missing.h5")], "no such file")


def test_scaling_study_one_command(tmp_path):
    """tools/scaling_study.py end to end, small: simulators, mpiexec at 1 and 2 ranks, report, plot."""
    report, png = tmp_path / "scaling.md", tmp_path / "scaling.png"
    res = subprocess.run(
        [sys.executable, str(REPO / "tools" / "scaling_study.py"), "--ranks", "1", "2", "--prompts-per-rank", "12",
         "--time-scale", "0.3", "--max-tokens", "8", "--out-dir", tmp_path / "runs", "--report", report,
         "--plot", png], capture_output=True, text=True, timeout=240, env=subprocess_env())
    assert res.returncode == 0, res.stdout + res.stderr
    md = report.read_text()
    assert "**Weak scaling**: the same 12 prompts per rank on 1, 2 ranks." in md
    assert [row[:2] for row in table(md, "## Throughput")] == [["1", "12"], ["2", "24"]]
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert re.search(r"mpiexec -n 2 .* run .*in_2\.jsonl", res.stdout)
