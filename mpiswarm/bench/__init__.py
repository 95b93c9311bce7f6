"""mpiswarm's benchmarks, each next to a reference measured in the same run (``tools/`` runs them):

* :mod:`.suite` — the seven sections of ``docs/bench.md`` (``python tools/bench.py``);
* :mod:`.report` — the suite's results as ``docs/bench.md`` (``python tools/bench.py --render``);
* :mod:`.cpu` — CPU per prompt against a bare pipeline (``tools/bench_cpu.py``);
* :mod:`.scale_model` — rank 0's share of a job, projected to thousands of ranks (``tools/scale_model.py``);
* :mod:`.scaling_study` — a weak-scaling study on one machine (``tools/scaling_study.py``).

They measure the package's internals, so they live in it; nothing here is imported by a run.
"""

import atexit
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..launch import communicate_bounded
from ..stacks import DIR_VARIABLE as STACKS_DIR_VARIABLE

#: the checkout this package lives in (docs/ is written there); children import this package from it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


#: where a job past its deadline writes its ranks' stacks (:func:`run_bounded`)
STACKS_DIR = tempfile.mkdtemp(prefix="mpiswarm-bench-stacks-")
atexit.register(shutil.rmtree, STACKS_DIR, True)


def source_digest(root: str = ROOT) -> str:
    """A digest of every ``mpiswarm/**/*.py`` below ``root`` as it is now. Each job imports the
    package from ``root`` when it starts, so two digests of one run that differ mean its jobs ran
    different code (one that starts between two edits runs half of a change: the 2026-11-23
    run's one-rank job that never ended did)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(root, "mpiswarm").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_state(root: str = ROOT) -> dict:
    """What code a benchmark's jobs run: the commit of ``root`` (None outside git), whether
    ``mpiswarm/`` has uncommitted changes, and :func:`source_digest`."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "mpiswarm")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": bool(status) if status is not None else None,
            "digest": source_digest(root)}


def child_env() -> dict:
    """The environment of a benchmark's children: this package importable, loopback not proxied,
    stacks on request into :data:`STACKS_DIR`."""
    env = dict(os.environ)
    env[STACKS_DIR_VARIABLE] = STACKS_DIR
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH")) if x)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(var, None)
    return env


def run_bounded(cmd: list[str], timeout: float, env: dict | None = None, ok=(0,)) -> tuple[float, str, str]:
    """Run ``cmd`` in a session of its own with a deadline (killed with every process below it past
    it); ``(wall seconds, stdout, stderr)``; RuntimeError for an exit code not in ``ok``."""
    started = time.perf_counter()
    env = dict(env or child_env())
    env.setdefault(STACKS_DIR_VARIABLE, STACKS_DIR)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    out, err, stacks = communicate_bounded(proc, timeout, STACKS_DIR)
    if stacks is not None:
        raise RuntimeError(f"{shlex.join(cmd)}: no end within {timeout:.0f} s (killed); its stderr:\n"
                           f"{err[-3000:]}\nthe ranks' stacks:\n{stacks[-12000:]}") from None
    if proc.returncode not in ok:
        raise RuntimeError(f"{shlex.join(cmd)}: exit {proc.returncode}\n{err[-3000:]}")
    return time.perf_counter() - started, out, err
