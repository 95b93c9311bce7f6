"""Shared helpers for the end-to-end tiers: simulated endpoints and mpiexec runs."""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from mpiswarm.launch import communicate_bounded, mapped_anywhere, mpiswarm_command
from mpiswarm.stacks import DIR_VARIABLE as STACKS_DIR_VARIABLE

REPO = Path(__file__).resolve().parents[1]
#: where the children's stacks go when a hung job is asked for them (:func:`finish`)
STACKS_DIR = tempfile.mkdtemp(prefix="mpiswarm-test-stacks-")
atexit.register(shutil.rmtree, STACKS_DIR, True)


def subprocess_env() -> dict:
    """The environment for child processes: this checkout importable, no proxies for loopback,
    stacks on request into :data:`STACKS_DIR`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env[STACKS_DIR_VARIABLE] = STACKS_DIR
    return env


def start_mpiswarm(n_ranks: int, args: list, cwd=None) -> subprocess.Popen:
    """Start ``mpiexec -n N python -m mpiswarm ARGS`` in a session of its own (a SIGTERM to its
    process group is what PBS sends at the walltime; Hydra's proxies and ranks are in sessions of
    their own below it, which :func:`~mpiswarm.launch.kill_job` also ends)."""
    cmd = mpiswarm_command(n_ranks, [str(a) for a in args])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=subprocess_env(), start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Wait for a job from :func:`start_mpiswarm`; past ``timeout`` kill it (every process of the
    job, :func:`~mpiswarm.launch.kill_job`) and fail."""
    out, err, stacks = communicate_bounded(proc, timeout, STACKS_DIR)
    if stacks is not None:
        pytest.fail(f"mpiswarm did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}\n"
                    f"the ranks' stacks:\n{stacks}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_mpiswarm(n_ranks: int, args: list, timeout: float = 120.0, cwd=None) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m mpiswarm ARGS`` with a hard deadline: a hang fails the test and
    every process of the job is killed."""
    return finish(start_mpiswarm(n_ranks, args, cwd), timeout)


@pytest.fixture
def sim_factory():
    """Start ``python -m mpiswarm.sim ARGS`` processes; every one is stopped (by PID) afterwards."""
    from mpiswarm.sim import start_process

    started = []

    def start(*args):
        proc = start_process([str(a) for a in args])
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sim_counter(url: str, name: str = "mpiswarm_sim:http_requests_total") -> float:
    """A counter from a simulated endpoint's /metrics (summed over labels)."""
    root = url.rstrip("/").removesuffix("/v1")
    with urllib.request.urlopen(root + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def pytest_ignore_collect(collection_path, config):
    """tests/mpi runs under mpiexec (tests/e2e/test_mpi_tier.py starts it); a plain run skips it."""
    if collection_path.name == "mpi" and collection_path.parent.name == "tests" and not config.getoption(
            "with_mpi", default=False):
        return True
    return None


def leftover_segments(since: float) -> set[Path]:
    """Files in ``/dev/shm`` made since ``since`` (``time.time()``) that no live process maps:
    what the jobs and servers that ended since then left behind."""
    made = set()
    for path in Path("/dev/shm").iterdir():
        try:
            if path.stat().st_ctime >= since:
                made.add(path)
        except FileNotFoundError:  # removed while we looked
            continue
    return made - mapped_anywhere()


