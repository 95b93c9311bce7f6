"""The Quickstart's first command ends in ``mpiswarm demo``: it must keep working."""
import subprocess
import sys

from mpiswarm.store import read_results

from ..conftest import subprocess_env


def test_demo_runs_four_ranks_on_simulated_endpoints(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mpiswarm", "demo", "-o", "demo.h5", "--time-scale", "0.2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=180, env=subprocess_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1200 prompts on 4 ranks: 1200 ok, 0 failed;" in res.stdout
    data = read_results(tmp_path / "demo.h5")
    assert data["ok"].all() and len(data["prompt"]) == 1200
    assert data["custom_id"][0] == "q0000" and sorted(set(data["rank"].tolist())) == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.h5"]
