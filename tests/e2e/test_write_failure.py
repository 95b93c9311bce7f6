"""A write that fails (issue 16, item 5): a real failure — the job runs under a file size limit
(``RLIMIT_FSIZE``, SIGXFSZ ignored so a write past it fails with EFBIG as on a full disk or a
quota) that the checkpoints fit under and the result file does not. One line names the path and
the reason, nothing sits at the output path, the checkpoints stay, and the same command without
the limit writes the file without sending anything again."""
from __future__ import annotations

import os
import resource
import signal
import subprocess

import pytest

from mpiswarm.launch import mpiswarm_command
from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, subprocess_env, write_jsonl
from .test_faults import EXIT_RESUME, prompts_received
from .test_run import endpoint_args, make_rows

# bytes: the checkpoints (answers only, ~0.5 MB) and MPICH's shared memory segments (UCX: ~4.1 MiB)
# fit; the result file (12 MB of prompts) or a part of it (6 MB at 2 ranks) does not
FILE_LIMIT = 5 << 20


def limited(n_ranks: int, args: list, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``mpiexec … mpiswarm ARGS`` with no file larger than FILE_LIMIT (every rank inherits it)."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    return subprocess.run(mpiswarm_command(n_ranks, [str(a) for a in args]), capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout, preexec_fn=limit, start_new_session=True)


@pytest.mark.parametrize("layout, ranks", [("single", 4), ("virtual", 2)])
def test_write_that_fails_keeps_the_checkpoints_and_the_same_command_writes_the_file(tmp_path, sim_factory,
                                                                                     layout, ranks):
    rows = [dict(r, prompt=r["prompt"] + " " + "long context " * 460) for r in make_rows(2000)]
    sim = sim_factory("--count", ranks, "--time-scale", 0, "--max-model-len", 100000)
    out = tmp_path / "out.h5"
    args = ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim), "--max-tokens", 8,
            "--layout", layout]
    res = limited(ranks, args)
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("mpiswarm: cannot write ") and "File too large" in lines[0], lines[0]
    assert str(out) in lines[0] and "run the same command again" in lines[0]
    assert "Traceback" not in res.stdout + res.stderr
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out.h5.tmp")] == []  # nothing half-written
    assert not (tmp_path / "out.h5.parts").exists() or not os.listdir(tmp_path / "out.h5.parts")
    assert any(p.endswith(".shard") for p in os.listdir(tmp_path / "out.h5.run"))
    sent = prompts_received(sim)
    assert sent == len(rows)

    again = run_mpiswarm(ranks, args)  # space is back
    assert again.returncode == 0, again.stdout + again.stderr
    assert prompts_received(sim) == sent  # nothing asked again: every row came from the checkpoints
    data = read_results(out)
    assert data["ok"].all() and data["prompt"].tolist() == [r["prompt"] for r in rows]
    assert all(data["completion"])
    assert not (tmp_path / "out.h5.run").exists()
