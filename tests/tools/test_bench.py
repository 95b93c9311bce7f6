"""tools/bench.py: the committed report is what the tool renders from the committed figures.

The benchmark itself takes minutes (``python tools/bench.py``, ``--quick`` for about four); this
only checks that ``docs/bench.md`` and ``docs/bench.json`` belong together and that every
section of the report is there.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_report_renders_from_its_json(tmp_path):
    out = tmp_path / "bench.md"
    res = subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), "--render", str(REPO / "docs" / "bench.json"),
                          "--md", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    text = out.read_text(encoding="utf-8")
    assert text == (REPO / "docs" / "bench.md").read_text(encoding="utf-8")
    for heading in ("## Summary", "## 1. CPU per prompt", "## 2. Batch vs single requests", "## 3. Concurrency sweep",
                    "## 4. Makespan with one slow endpoint", "## 5. Gather + write", "## 6. Weak scaling"):
        assert heading in text


def test_a_benchmark_knows_when_its_code_changed_under_it(tmp_path):
    """Each job of a benchmark imports mpiswarm from the checkout when it starts: source_state
    tells the code a run ran (commit, uncommitted changes) and, by its digest, whether it changed
    between the start and the end (the run then fails: its jobs ran different code)."""
    from mpiswarm.bench import source_state

    package = tmp_path / "mpiswarm"
    (package / "sim").mkdir(parents=True)
    (package / "runner.py").write_text("dynamic = True\n")
    (package / "sim" / "model.py").write_text("x = 1\n")
    outside_git = source_state(str(tmp_path))
    assert outside_git["commit"] is None and outside_git["uncommitted"] is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    clean = source_state(str(tmp_path))
    assert clean["digest"] == outside_git["digest"] and clean["uncommitted"] is False and len(clean["commit"]) == 40
    (package / "runner.py").write_text("dynamic = size > 1\n")  # half of an edit
    edited = source_state(str(tmp_path))
    assert edited["digest"] != clean["digest"] and edited["uncommitted"] is True
    assert edited["commit"] == clean["commit"]
