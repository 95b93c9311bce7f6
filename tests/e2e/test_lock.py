"""One job per output, end to end: a second job on a held output is refused, a killed job's
lock is taken over (issue 16, item 1)."""
from __future__ import annotations

import json
import os
import time

from mpiswarm.launch import kill_job
from mpiswarm.lock import lock_path
from mpiswarm.store import read_results

from ..conftest import finish, run_mpiswarm, sim_counter, start_mpiswarm, write_jsonl
from .test_run import assert_rows, endpoint_args, make_rows


def wait_for_lock(path, proc, timeout=60.0) -> dict:
    """The lock's holder once the job has written it (the job must still be running)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as fh:
                return json.loads(fh.read())
        except (FileNotFoundError, ValueError):
            pass
        assert proc.poll() is None, "the first job ended before taking the lock"
        assert time.monotonic() < deadline, "the first job never took the lock"
        time.sleep(0.05)


def test_second_job_on_a_held_output_exits_2_naming_the_holder_and_sends_nothing(tmp_path, sim_factory,
                                                                                   monkeypatch):
    rows = make_rows(40)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.h5"
    slow = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 10)  # holds job 1 in its health check
    other = sim_factory("--count", 2, "--time-scale", 0)
    monkeypatch.setenv("PBS_JOBID", "1001.test-pbs")
    first = start_mpiswarm(2, ["run", inp, "-o", out, *endpoint_args(slow), "--max-tokens", 8])
    try:
        holder = wait_for_lock(lock_path(out), first)
        monkeypatch.setenv("PBS_JOBID", "1002.test-pbs")
        second = run_mpiswarm(2, ["run", inp, "-o", out, *endpoint_args(other), "--max-tokens", 8], timeout=60)
    finally:
        done = finish(first, timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"in use by PBS job 1001.test-pbs, PID {holder['pid']} on {holder['host']}" in lines[0]
    assert sum(sim_counter(u, "mpiswarm_sim:http_requests_total") for u in other.urls) == 0
    assert done.returncode == 0, done.stdout + done.stderr
    assert_rows(read_results(out), rows, max_tokens=8)
    assert not os.path.exists(lock_path(out))


def test_lock_of_a_job_killed_on_this_host_is_taken_over_at_once(tmp_path, sim_factory, monkeypatch):
    """kill -9, then the same command at once: the holder's process is gone, its lock is taken
    over (the heartbeat's staleness, for holders on other hosts, is tests/unit/test_lock.py's)."""
    rows = make_rows(40)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.h5"
    slow = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 30)
    sim = sim_factory("--count", 2, "--time-scale", 0)
    monkeypatch.delenv("PBS_JOBID", raising=False)
    first = start_mpiswarm(2, ["run", inp, "-o", out, *endpoint_args(slow), "--max-tokens", 8])
    holder = wait_for_lock(lock_path(out), first)
    kill_job(first.pid)
    finish(first, timeout=30)
    assert os.path.exists(lock_path(out))  # nobody removed it: its heartbeat simply stopped
    res = run_mpiswarm(2, ["run", inp, "-o", out, *endpoint_args(sim), "--max-tokens", 8])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"taking over the lock of a job outside PBS, PID {holder['pid']}" in res.stderr
    assert f"its process {holder['pid']} is gone" in res.stderr
    assert_rows(read_results(out), rows, max_tokens=8)
    assert not os.path.exists(lock_path(out))
