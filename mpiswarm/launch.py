"""Starting ``mpiexec`` from Python (demo, tools and tests): which launcher, which command."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

#: ``kill -USR1 <rank's pid>`` prints the Python stack of every thread of that rank on its stderr
#: (``faulthandler``: it works while the rank is inside an MPI call too), and the rank goes on
STACKS_SIGNAL = signal.SIGUSR1


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


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def dump_stacks(pid: int, timeout: float = 2.0) -> int:
    """Ask every mpiswarm process below ``pid`` (a job we started and are about to kill for
    overrunning its deadline) for its stacks (:data:`STACKS_SIGNAL`), and wait until each has
    taken the signal (it is no longer pending: ``faulthandler`` writes at delivery); returns how
    many were asked. Their stacks go to their stderr, which the caller reads after the kill."""
    asked = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpiswarm" in cmdline and b"-m" in cmdline:
            try:
                os.kill(child, STACKS_SIGNAL)
                asked.append(child)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while any(_pending(child, STACKS_SIGNAL) for child in asked) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(asked)


def _pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` waits to be delivered to ``pid`` (False once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    bit = 1 << (sig - 1)
    return any(int(line.split()[1], 16) & bit for line in status.splitlines()
               if line.startswith(("SigPnd:", "ShdPnd:")))
