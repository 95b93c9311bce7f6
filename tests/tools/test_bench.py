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
