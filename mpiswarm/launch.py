"""Starting ``mpiexec`` from Python (demo, tools and tests): which launcher, which command; and,
for the harnesses, the processes below a job, their stacks, and a kill that leaves nothing behind."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
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


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (state, ppid, pgrp, …), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far; None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, list[str]]:
    """Every process on this host (Linux ``/proc``): pid -> its stat fields after the command
    name (state, ppid, pgrp, session, …)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(int(entry.name))
        if fields is not None:  # not gone meanwhile
            table[int(entry.name)] = fields
    return table


def _below(pid: int, table: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for each, fields in table.items():
        children.setdefault(int(fields[1]), []).append(each)
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``), children first."""
    return _below(pid, processes())


def job_processes(pid: int) -> list[int]:
    """The live (not zombie) processes of a job or server we started as ``pid``, in a session of
    its own: its process group, and every process below it — MPICH's Hydra starts each proxy and
    each rank in a session of its own, so the group alone misses the ranks, and a server's
    children leave the tree once their parent has exited."""
    table = processes()
    found = set(_below(pid, table)) | {pid} | {each for each, fields in table.items() if int(fields[2]) == pid}
    return sorted(each for each in found if each in table and table[each][0] != "Z")


def shared_memory_of(pids) -> set[Path]:
    """The files in ``/dev/shm`` that the processes ``pids`` have mapped: MPICH's segments
    (``mpich_shm_*``), vLLM's (``psm_*``, ``sem.*``)."""
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                if len(fields) == 6 and fields[5].startswith("/dev/shm/") and not fields[5].endswith("(deleted)"):
                    found.add(Path(fields[5]))
    return found


def kill_job(pid: int, timeout: float = 10.0, segments=()) -> None:
    """SIGKILL a job or server we started as ``pid`` (:func:`job_processes`: its process group
    and every process below it, each by its PID) and, once they are gone, remove the
    ``/dev/shm`` files they had mapped (and ``segments``, found earlier): a killed MPI job
    leaves MPICH's segments there, a killed vLLM its own."""
    processes = job_processes(pid)
    segments = set(segments) | shared_memory_of(processes)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for each in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(is_running(each) for each in processes) and time.monotonic() < deadline:
        time.sleep(0.01)  # other processes' deaths (not all our children): nothing to wait on
    remove_unmapped(segments)


def mapped_anywhere() -> set[Path]:
    """The ``/dev/shm`` files that some process on this host maps now."""
    return shared_memory_of(int(p.name) for p in Path("/proc").glob("[0-9]*"))


def remove_unmapped(segments) -> None:
    """Remove those of ``segments`` (``/dev/shm`` files) that no live process maps any more."""
    if not segments:
        return
    for path in set(segments) - mapped_anywhere():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
            (directory / f"{child}.tasks").exists() or not is_running(child) for child in asked):
        time.sleep(0.01)  # another process's answer: nothing to wait on but its file
    parts = [describe_processes(pid)]
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


def describe_processes(pid: int) -> str:
    """One line per process of the job ``pid`` (:func:`job_processes`): pid, parent, state, the
    kernel function it sleeps in, its command line — what a hang before any rank runs Python
    (``mpiexec`` or a rank stuck in ``MPI_Init``) still shows."""
    lines = ["processes of the job (pid, parent, state, waiting in, command):"]
    for each in job_processes(pid):
        fields = _stat_fields(each) or ["?", "?"]
        try:
            wchan = Path(f"/proc/{each}/wchan").read_text() or "-"
        except OSError:  # gone meanwhile
            continue
        lines.append(f"  {each} {fields[1]} {fields[0]} {wchan} {command_line(each)[:200]}")
    return "\n".join(lines)


def command_line(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ("" once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def communicate_bounded(proc, timeout: float, stacks_dir: str | os.PathLike,
                        kill=None) -> tuple[str, str, str | None]:
    """``proc.communicate()`` with a deadline, for a job started in a session of its own with
    ``$MPISWARM_STACKS_DIR`` set to ``stacks_dir``: ``(stdout, stderr, None)`` when it ends in
    time; past ``timeout``, its processes' stacks and tasks (:func:`dump_stacks`) are recorded,
    it is killed (``kill(pid)``, :func:`kill_job` by default) and its output collected:
    ``(stdout, stderr, stacks)``."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, None
    except subprocess.TimeoutExpired:
        stacks = dump_stacks(proc.pid, stacks_dir)  # every rank's threads and tasks: where it was stuck
        (kill or kill_job)(proc.pid)
        out, err = proc.communicate()
        return out, err, stacks


_HAVE_PROC = Path("/proc/self/stat").exists()


def is_running(pid: int) -> bool:
    """Whether ``pid`` runs on this host: it exists and is not a zombie (one nobody reaped is
    dead all the same). Without ``/proc`` (not Linux), whether it answers signal 0."""
    if not _HAVE_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            pass
        return True
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"

