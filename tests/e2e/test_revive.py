"""Endpoints that come back are used again, end to end (issue 16, item 6): a simulator killed
mid-run and started again on the same port serves calls after its restart; an endpoint still
loading at the start (``--min-endpoints``) joins once healthy; every row right; ``ranks/`` and
``inspect`` say when each was lost and came back."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from mpiswarm.store import read_results

from ..conftest import finish, sim_counter, start_mpiswarm, subprocess_env, write_jsonl
from .test_run import MODEL, assert_rows, make_rows

CALLS = "mpiswarm_sim:http_requests_total"


def job(tmp_path, rows, sims, *extra):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"127.0.0.1\t{s.ports[0]}\n" for s in sims))
    return ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "out.h5", "--model", MODEL,
            "--hostfile", hostfile, "--max-tokens", 8, "--batch-size", 2, "--concurrency", 1,
            "--schedule", "static", "--revive-interval", 0.5, *extra]


def inspect(path) -> str:
    res = subprocess.run([sys.executable, "-m", "mpiswarm", "inspect", str(path)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_endpoint_killed_mid_run_and_restarted_on_its_port_serves_again(tmp_path, sim_factory):
    rows = make_rows(400)
    slow = ("--count", 1, "--time-scale", 0, "--jitter", 0.2)  # ~0.1 s a call: the run lasts ~10 s
    first, other = sim_factory(*slow), sim_factory(*slow)
    proc = start_mpiswarm(2, job(tmp_path, rows, [first, other]))
    try:
        deadline = time.monotonic() + 60
        while sim_counter(first.urls[0], CALLS) < 5:  # rank 0 is sending to it
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        time.sleep(2)  # the downtime being simulated: the server is away for 2 s, then restarts
        again = sim_factory(*slow, "--port", first.ports[0])
    finally:
        res = finish(proc, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert sim_counter(again.urls[0], CALLS) > 0  # the restarted server served calls
    ranks = data["ranks"]
    assert ranks["n_endpoint_lost"][0] >= 1 and ranks["n_endpoint_back"][0] >= 1
    assert 0 < ranks["t_endpoint_lost"][0] < ranks["t_endpoint_back"][0]
    assert ranks["n_endpoint_lost"][1] == 0 and ranks["t_endpoint_back"][1] == -1
    report = inspect(tmp_path / "out.h5")
    assert "lost and back" in report and f"{first.urls[0]} (rank 0): lost" in report and ", back " in report


def test_endpoint_still_loading_at_the_start_joins_when_healthy(tmp_path, sim_factory):
    rows = make_rows(300)
    late = sim_factory("--count", 1, "--time-scale", 0, "--jitter", 0.2, "--slow-start", 4)
    ready = sim_factory("--count", 1, "--time-scale", 0, "--jitter", 0.2)
    proc = start_mpiswarm(2, job(tmp_path, rows, [late, ready], "--min-endpoints", 1, "--health-timeout", 1))
    res = finish(proc, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "unavailable: not healthy after 1 s" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert sim_counter(late.urls[0], "mpiswarm_sim:prompts_received_total") > 0
    ranks = data["ranks"]
    assert (ranks["n_endpoint_lost"][0], ranks["n_endpoint_back"][0]) == (1, 1)
    assert ranks["t_endpoint_lost"][0] == 0 < ranks["t_endpoint_back"][0]
