"""Starting ``mpiexec`` from Python (demo, tools and tests): which launcher, which command."""
from __future__ import annotations

import os
import shutil
import sys


def find_mpiexec() -> str:
    """The ``mpiexec`` beside this Python (the ``mpich`` wheel's, in a venv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("no mpiexec found: pip install 'mpiswarm[mpich]' or load your MPI module")
    return found


def mpiswarm_command(n_ranks: int, args: list[str]) -> list[str]:
    """``mpiexec -n N python -m mpiswarm ARGS…`` with this Python."""
    return [find_mpiexec(), "-n", str(n_ranks), sys.executable, "-m", "mpiswarm", *args]
