"""Fault tolerance end to end: no prompt lost (tier 3, simulated faults and real signals)."""
from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from mpiswarm.checkpoint import decode_records
from mpiswarm.launch import kill_job, processes
from mpiswarm.sim import expected_completion
from mpiswarm.store import read_results

from ..conftest import finish, leftover_segments, run_mpiswarm, sim_counter, start_mpiswarm, write_jsonl
from .test_run import assert_rows, endpoint_args, make_rows

EXIT_RESUME = 75


def job_args(tmp_path, rows, sim, *extra):
    return ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "out.h5", *endpoint_args(sim),
            "--max-tokens", 8, *extra]


def prompts_received(sim) -> int:
    return int(sum(sim_counter(u, "mpiswarm_sim:prompts_received_total") for u in sim.urls))


def test_five_percent_500s_two_percent_drops_on_every_endpoint(tmp_path, sim_factory):
    """The issue's figure: 5% of calls fail with 500 and 2% drop the connection, everywhere."""
    rows = make_rows(800)
    sim = sim_factory("--count", 4, "--time-scale", 0, "--error-rate", 0.07,
                      "--error-kinds", "500,500,500,500,500,drop,drop", "--fault-seed", 3)
    res = run_mpiswarm(4, job_args(tmp_path, rows, sim, "--batch-size", 4, "--concurrency", 4))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["ranks"]["n_retries"].sum() > 0
    print(f"5%/2% faults: {data['ranks']['n_calls'].sum()} calls, {data['ranks']['n_retries'].sum()} retries")


def test_timeouts_are_retried(tmp_path, sim_factory):
    rows = make_rows(40)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--error-rate", 0.25, "--error-kinds", "timeout",
                      "--fault-seed", 2)
    res = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--batch-size", 4, "--request-timeout", 0.5))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["ranks"]["n_retries"].sum() > 0


def test_random_500s_429s_and_dropped_connections(tmp_path, sim_factory):
    """5% of calls fail with 500, 2% drop the connection, some 429: every prompt answered, exit 0."""
    rows = make_rows(400)
    sim = sim_factory("--count", 4, "--time-scale", 0, "--error-rate", 0.12, "--error-kinds", "500,500,429,drop",
                      "--fault-seed", 11)
    res = run_mpiswarm(4, job_args(tmp_path, rows, sim, "--batch-size", 5, "--concurrency", 4, "--schedule", "static"))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    retries = data["ranks"]["n_retries"]
    assert retries.sum() > 0 and (data["ranks"]["n_failovers"] == 0).all()
    assert data["ranks"]["n_calls"].sum() == 80 + retries.sum()
    assert f"{retries.sum()} retries" in res.stdout


def test_endpoint_crashing_mid_run_is_covered_by_the_others(tmp_path, sim_factory):
    """One of four endpoints crashes after its second call: its rank fails over, nothing is lost."""
    rows = make_rows(200)
    sim = sim_factory("--count", 4, "--time-scale", 0, "--crash-after", 2, "--fault-endpoints", 2)
    res = run_mpiswarm(4, job_args(tmp_path, rows, sim, "--batch-size", 10, "--concurrency", 1,
                                   "--schedule", "static"))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    ranks = data["ranks"]
    assert ranks["n_failovers"].tolist() == [0, 0, 1, 0]
    assert json.loads(ranks["extra"][2])["dead_endpoints"].keys() == {sim.urls[2]}
    assert "1 endpoint(s) declared dead" in res.stdout
    served_by_crashed = sim_counter(sim.urls[2], "vllm:request_success_total")
    assert served_by_crashed == 20  # its two calls of 10 before the crash


def test_slow_starting_endpoint(tmp_path, sim_factory):
    rows = make_rows(40)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 3, "--fault-endpoints", 1)
    t0 = time.monotonic()
    res = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--health-timeout", 60))
    assert res.returncode == 0, res.stdout + res.stderr
    assert time.monotonic() - t0 > 3
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)


def test_min_endpoints_lets_the_job_go_on_without_a_dead_endpoint(tmp_path, sim_factory):
    """One endpoint never comes up: with --min-endpoints 1 its rank uses the other one."""
    rows = make_rows(60)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 600, "--fault-endpoints", 1)
    res = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--health-timeout", 2, "--min-endpoints", 1))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"endpoint {sim.urls[1]} unavailable" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert sim.urls[1] in json.loads(data["ranks"]["extra"][1])["dead_endpoints"]
    assert prompts_received(sim) == 60 and sim_counter(sim.urls[1], "mpiswarm_sim:prompts_received_total") == 0


def test_four_over_long_prompts_among_400(tmp_path, sim_factory):
    rows = make_rows(400)
    bad = [17, 101, 250, 399]
    for i in bad:
        rows[i]["prompt"] = f"too long {i} " + "word " * 300
    sim = sim_factory("--count", 4, "--time-scale", 0, "--max-model-len", 256, "--shuffle-choices")
    res = run_mpiswarm(4, job_args(tmp_path, rows, sim))
    assert res.returncode == 3, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert np.flatnonzero(~data["ok"]).tolist() == bad
    for i in bad:
        assert "maximum context length is 256 tokens" in data["error"][i]
    good = [r for i, r in enumerate(rows) if i not in bad]
    assert [data["completion"][i] for i in range(400) if i not in bad] == [
        expected_completion(r["prompt"], max_tokens=8)[0] for r in good]
    assert data["attrs"]["complete"] and "396 ok, 4 failed" in res.stdout


def _shard_rows(run_dir: Path) -> int:
    """Rows checkpointed so far (read while the job writes: a torn last record is skipped)."""
    return sum(len(r) for shard in run_dir.glob("*.shard") for r in decode_records(shard.read_bytes()))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_a_random_moment_then_resume(tmp_path, sim_factory, seed):
    """kill -9 of the whole job, then the same command: the file is completed in order, and no
    more prompts are sent again than the calls in flight could carry."""
    rng = random.Random(seed)
    rows = make_rows(600)
    batch, concurrency, ranks = 10, 2, 4
    sim = sim_factory("--count", ranks, "--time-scale", 1.0, "--max-num-seqs", 8)
    args = job_args(tmp_path, rows, sim, "--batch-size", batch, "--concurrency", concurrency)
    run_dir = tmp_path / "out.h5.run"
    started = time.time() - 1  # ctime's granularity
    job = start_mpiswarm(ranks, args)
    deadline = time.monotonic() + 60
    target = rng.randint(20, 300)
    while _shard_rows(run_dir) < target if run_dir.exists() else True:
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before the kill"
        time.sleep(0.05)
    kill_job(job.pid)  # a crash, mid-run
    job.wait(30)
    job.communicate()
    assert not leftover_segments(started)  # the harness removed what MPICH left in /dev/shm
    saved = _shard_rows(run_dir)
    sent_before = prompts_received(sim)
    assert not (tmp_path / "out.h5").exists() and 0 < saved < 600

    res = run_mpiswarm(ranks, args)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["attrs"]["n_resumed"] == saved and data["attrs"]["attempt"] == 1
    resent = prompts_received(sim) - 600
    assert 0 <= resent <= ranks * concurrency * batch, (resent, sent_before, saved)
    assert not run_dir.exists()
    print(f"seed {seed}: killed with {saved} rows saved, {sent_before} sent; resent {resent} prompts")


def test_a_job_past_its_deadline_is_killed_with_every_ranks_stacks_in_the_failure(tmp_path, sim_factory):
    """The harness's side of a hang (issue 16, item 7: one chat job once did not end within 300
    s and left nothing to say why): before the kill, each rank is asked for its stacks (SIGUSR2,
    faulthandler and its asyncio tasks), which land in the failure's message."""
    loading = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 90)  # holds the job in its health check
    job = start_mpiswarm(2, job_args(tmp_path, make_rows(10), loading, "--health-timeout", 120))
    deadline = time.monotonic() + 60
    while not all(sim_counter(u, "mpiswarm_sim:health_checks_total") for u in loading.urls):
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(pytest.fail.Exception) as failed:
        finish(job, timeout=0.1)
    text = str(failed.value)
    assert "mpiswarm did not finish within 0.1 s" in text
    assert text.count("most recent call first") >= 2, text  # both ranks' threads
    assert "in _check_endpoints" in text, text  # where they were: the health phase
    assert "asyncio tasks of mpiswarm rank 0" in text and "asyncio tasks of mpiswarm rank 1" in text, text


def test_a_job_stuck_on_a_reply_that_never_comes_says_which_call_each_rank_waits_for(tmp_path, sim_factory):
    """A rank idle in its event loop shows ``select`` in its thread stack, nothing more: its
    asyncio tasks, each with its chain of ``await``, say that it waits for one HTTP reply."""
    holding = sim_factory("--count", 2, "--time-scale", 0, "--error-rate", 1, "--error-kinds", "timeout")
    job = start_mpiswarm(2, job_args(tmp_path, make_rows(10), holding, "--request-timeout", 300))
    deadline = time.monotonic() + 60
    while not all(sim_counter(u) for u in holding.urls):  # a call in flight on each endpoint, held
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(pytest.fail.Exception) as failed:
        finish(job, timeout=0.1)
    text = str(failed.value)
    assert "processes of the job" in text and "hydra_pmi_proxy" in text, text
    for rank in (0, 1):
        tasks = text[text.index(f"asyncio tasks of mpiswarm rank {rank}"):]
        tasks = tasks[: tasks.index("end of the tasks of pid")]
        assert "in Dispatcher.send" in tasks and "in EndpointClient._post" in tasks, tasks  # one call's reply
        assert "waiting for <Future pending" in tasks, tasks


def test_exit_file_holds_the_code_of_a_job_refused_before_mpi_starts(tmp_path, monkeypatch):
    exit_file = tmp_path / "exit-code"
    monkeypatch.setenv("MPISWARM_EXIT_FILE", str(exit_file))
    res = run_mpiswarm(2, ["run", tmp_path / "missing.jsonl", "-o", tmp_path / "out.h5", "--model", "m"])
    assert res.returncode == 2, res.stdout + res.stderr
    assert exit_file.read_text() == "2\n" and len(list(tmp_path.iterdir())) == 1  # no temporary file left


@pytest.mark.parametrize("to", ["session", "mpiexec"])
def test_sigterm_while_the_endpoints_load_ends_the_job_at_once_and_sends_nothing(tmp_path, sim_factory, to):
    """Servers take minutes to load (--health-timeout): a SIGTERM (PBS at the walltime, to the
    whole job; or to mpiexec alone, which passes it on) in that wait ends the job now with exit
    75 and one line, not once the wait is over; nothing is sent or left behind, and the same
    command runs the job."""
    rows = make_rows(30)
    loading = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 90)
    args = job_args(tmp_path, rows, loading, "--health-timeout", 120)
    job = start_mpiswarm(2, args)
    deadline = time.monotonic() + 60
    while not all(sim_counter(u, "mpiswarm_sim:health_checks_total") for u in loading.urls):  # both ranks wait
        assert job.poll() is None and time.monotonic() < deadline, "the job never reached its health check"
        time.sleep(0.05)
    t0 = time.monotonic()
    (os.killpg if to == "session" else os.kill)(job.pid, signal.SIGTERM)
    res = finish(job, timeout=60)
    took = time.monotonic() - t0
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert took < 15, f"the job took {took:.1f} s to end after SIGTERM"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["mpiswarm: SIGTERM received while checking the endpoints: nothing was sent; "
                     "run the same command again to run the job"], res.stderr
    assert sum(sim_counter(u) for u in loading.urls) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, run directory or lock

    ready = sim_factory("--count", 2, "--time-scale", 0)
    res = run_mpiswarm(2, job_args(tmp_path, rows, ready))
    assert res.returncode == 0, res.stdout + res.stderr
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)


def test_sigterm_writes_partial_file_then_resume(tmp_path, sim_factory, monkeypatch):
    exit_file = tmp_path / "exit-code"
    monkeypatch.setenv("MPISWARM_EXIT_FILE", str(exit_file))  # rank 0's own code (jobs/lib.sh reads it)
    rows = make_rows(600)
    sim = sim_factory("--count", 2, "--time-scale", 1.0, "--max-num-seqs", 4)
    args = job_args(tmp_path, rows, sim, "--batch-size", 8, "--concurrency", 2)
    job = start_mpiswarm(2, args)
    run_dir = tmp_path / "out.h5.run"
    deadline = time.monotonic() + 60
    while not run_dir.exists() or _shard_rows(run_dir) < 40:
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    os.killpg(job.pid, signal.SIGTERM)  # what PBS does at the walltime
    res = finish(job, timeout=60)
    assert time.monotonic() - t0 < 15
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert "SIGTERM received" in res.stdout and "run the same command again to resume" in res.stdout
    assert "MPI_Finalize failed" not in res.stderr, res.stderr  # no control message left unreceived
    assert exit_file.read_text() == "75\n"
    data = read_results(tmp_path / "out.h5")
    assert not data["attrs"]["complete"]
    answered = np.flatnonzero(data["ok"])
    assert 40 <= len(answered) < 600
    for i in answered:
        assert data["completion"][i] == expected_completion(rows[i]["prompt"], max_tokens=8)[0]
    assert all("not answered" in e for e in data["error"][~data["ok"]])
    assert run_dir.exists()

    res = run_mpiswarm(2, args)
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    assert_rows(data, rows, max_tokens=8)
    assert data["attrs"]["complete"] and data["attrs"]["n_resumed"] >= len(answered)


def test_time_limit_then_resume_and_changed_options_refused(tmp_path, sim_factory):
    rows = make_rows(300)
    sim = sim_factory("--count", 2, "--time-scale", 1.0, "--max-num-seqs", 4)
    args = job_args(tmp_path, rows, sim, "--batch-size", 8, "--time-limit", 1.5)
    res = run_mpiswarm(2, args)
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert "--time-limit reached" in res.stdout
    partial = read_results(tmp_path / "out.h5")
    assert not partial["attrs"]["complete"] and 0 < partial["ok"].sum() < 300

    changed = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--batch-size", 8, "--max-tokens", 9))
    assert changed.returncode == 2
    assert "cannot resume: its options differ (sampling); use --restart to start over" in changed.stderr

    for _ in range(20):  # the same command, again and again, finishes the job
        res = run_mpiswarm(2, args)
        if res.returncode != EXIT_RESUME:
            break
    assert res.returncode == 0, res.stdout + res.stderr
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)

    (tmp_path / "out.h5").unlink()
    assert run_mpiswarm(2, args).returncode == EXIT_RESUME  # a new run dir (the old one is gone)
    res = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--batch-size", 8, "--max-tokens", 9, "--restart"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=9)
    assert "resumed" not in res.stdout


def test_every_endpoint_down_stops_resumable(tmp_path, sim_factory):
    rows = make_rows(100)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--crash-after", 1)
    args = job_args(tmp_path, rows, sim, "--batch-size", 10, "--concurrency", 1, "--schedule", "static")
    res = run_mpiswarm(2, args)
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert "every endpoint is down" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert not data["attrs"]["complete"] and data["ok"].sum() == 20
    sim.stop()
    revived = sim_factory("--count", 2, "--time-scale", 0, "--port", sim.ports[0])
    res = run_mpiswarm(2, args)
    assert res.returncode == 0, res.stdout + res.stderr
    assert_rows(read_results(tmp_path / "out.h5"), rows, max_tokens=8)
    assert prompts_received(revived) == 80


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_replies_that_do_not_answer_every_row_are_sent_again(tmp_path, sim_factory, api):
    """Issue 16, item 2: 200s missing a choice, repeating or misnumbering one, a choice without
    text, a body that is not JSON or not a completion: the rows they left are sent again."""
    rows = make_rows(120)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--error-rate", 0.25, "--fault-seed", 8, "--error-kinds",
                      "missing-choice,dup-choice,bad-index,no-text,not-json,not-completion")
    # --max-attempts 12: at a fault rate of 0.25, six bad replies in a row for one of the 120 rows
    # (a row failed for good, exit 3, as it should be) came in about 3% of runs; twelve, 1 in 10^5
    res = run_mpiswarm(2, job_args(tmp_path, rows, sim, "--batch-size", 6, "--concurrency", 2, "--api", api,
                                   "--max-attempts", 12, *(["--chat-route", "single"] if api == "chat" else [])))
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(tmp_path / "out.h5")
    if api == "chat":
        assert data["ok"].all() and (data["error"] == "").all()
    else:
        assert_rows(data, rows, max_tokens=8)
    bad = data["ranks"]["n_bad_replies"]
    assert bad.sum() > 0 and (data["ranks"]["n_failovers"] == 0).all()
    assert bad.sum() == sum(sim_counter(u, "mpiswarm_sim:faults_injected_total") for u in sim.urls)


def rank_pids(job) -> dict[int, int]:
    """rank -> pid of the ``mpiswarm run`` processes of ``job`` (descendants of its mpiexec, which
    gives each rank a session of its own; PMI_RANK)."""
    table = processes()

    def under_job(pid: int) -> bool:
        for _ in range(4):  # rank -> hydra_pmi_proxy -> mpiexec
            pid = int(table[pid][1]) if pid in table else 0
            if pid == job.pid:
                return True
        return False

    pids = {}
    for pid in table:
        if not under_job(pid):
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        rank = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"PMI_RANK=")), None)
        if rank is not None and b"mpiswarm" in cmdline and b"run" in cmdline:
            pids[int(rank)] = pid
    return pids


def test_sigterm_to_one_rank_stops_every_rank(tmp_path, sim_factory):
    """Issue 16, item 7: a signal that reaches one rank only (or one rank long before the others)
    stops the whole job through the control plane, at once: a partial file, exit 75."""
    rows = make_rows(600)
    sim = sim_factory("--count", 2, "--time-scale", 1.0, "--max-num-seqs", 4)
    job = start_mpiswarm(2, job_args(tmp_path, rows, sim, "--batch-size", 8, "--concurrency", 2))
    run_dir = tmp_path / "out.h5.run"
    deadline = time.monotonic() + 60
    while not run_dir.exists() or _shard_rows(run_dir) < 40:
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    pids = rank_pids(job)
    assert sorted(pids) == [0, 1], pids
    t0 = time.monotonic()
    os.kill(pids[1], signal.SIGTERM)  # rank 1 alone
    res = finish(job, timeout=60)
    assert time.monotonic() - t0 < 15
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert "SIGTERM received (on rank 1)" in res.stdout
    data = read_results(tmp_path / "out.h5")
    assert not data["attrs"]["complete"] and 40 <= data["ok"].sum() < 500
    assert all("not answered" in e for e in data["error"][~data["ok"]])
