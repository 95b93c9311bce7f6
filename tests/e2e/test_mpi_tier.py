"""Runs the pytest-mpi tier (tests/mpi) under mpiexec at 2 and 4 ranks, dask-mpi style."""
import subprocess
import sys

import pytest

from mpiswarm.launch import find_mpiexec

from ..conftest import REPO, subprocess_env


@pytest.mark.parametrize("n_ranks", [2, 4])
def test_collectives_under_mpiexec(n_ranks):
    cmd = [find_mpiexec(), "-n", str(n_ranks), sys.executable, "-m", "pytest", "--with-mpi", "-q",
           "-p", "no:cacheprovider", str(REPO / "tests" / "mpi")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=subprocess_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout.splitlines()[-1]
