"""Starting ``mpiexec`` from Python (demo, tools and tests): which launcher, which command."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from .stacks import SIGNAL as STACKS_SIGNAL


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


def dump_stacks(pid: int, directory: str | os.PathLike, timeout: float = 3.0) -> str:
    """The stacks of every mpiswarm process below ``pid`` (a job we started, with
    ``$MPISWARM_STACKS_DIR`` set to ``directory``, and are about to kill for overrunning its
    deadline): each is sent :data:`STACKS_SIGNAL`, and its answer (:mod:`mpiswarm.stacks`) waited
    for until ``timeout``, then read from ``directory``. A process stuck inside C (an MPI call)
    answers with its threads' stacks alone."""
    directory = Path(directory)
    asked = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if _is_mpiswarm(cmdline):
            (directory / f"{child}.tasks").unlink(missing_ok=True)  # an earlier process's, same pid
            try:
                os.kill(child, STACKS_SIGNAL)
                asked.append(child)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    # the tasks are written last, by the Python-level handler; a process stuck inside C never
    # writes them, but its threads are written at delivery, long before the deadline
    while time.monotonic() < deadline and not all(
            (directory / f"{child}.tasks").exists() or not _alive(child) for child in asked):
        time.sleep(0.01)  # another process's answer: nothing to wait on but its file
    parts = []
    for child in asked:
        parts.append(f"--- pid {child} ---")
        for kind in ("threads", "tasks"):
            path = directory / f"{child}.{kind}"
            parts.append(path.read_text(errors="replace").rstrip() if path.exists()
                         else f"(no {kind}: the process did not answer within {timeout:g} s)")
    return "\n".join(parts)


def _is_mpiswarm(cmdline: list[bytes]) -> bool:
    """A Python running ``-m mpiswarm``, ``-m mpiswarm.sim`` or the ``mpiswarm`` script (not
    ``mpiexec``, whose arguments name it too)."""
    if not cmdline or not os.path.basename(cmdline[0]).startswith(b"python"):
        return False
    if cmdline[1:2] == [b"-m"] and len(cmdline) > 2:
        return cmdline[2] == b"mpiswarm" or cmdline[2].startswith(b"mpiswarm.")
    return len(cmdline) > 1 and os.path.basename(cmdline[1]) == b"mpiswarm"


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
