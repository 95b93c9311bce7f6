"""The harnesses' kill (mpiswarm.launch.kill_job): every process of a job we started — also the
ones in sessions of their own below it, as MPICH's Hydra starts its proxies and ranks — and
the /dev/shm files they had mapped, never a file another process still maps."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mpiswarm.launch import job_processes, kill_job

#: a leader that starts a child in a session of its own (a Hydra rank); both map a /dev/shm file
#: and say so on stdout, then wait to be killed (60 s at most)
TREE = r"""
import mmap, os, subprocess, sys, time
path = sys.argv[1]
if sys.argv[2] == "leader":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[3], path + ".child", "child", ""], start_new_session=True)
with open(path, "w+b") as fh:
    fh.truncate(4096)
    segment = mmap.mmap(fh.fileno(), 4096)
print("mapped", flush=True)
time.sleep(60)
"""


def shm_path(tag: str) -> Path:
    return Path("/dev/shm") / f"mpiswarm-test-{tag}-{uuid.uuid4().hex[:8]}"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_a_killed_job_takes_its_processes_and_its_shared_memory_with_it():
    path = shm_path("job")
    leader = subprocess.Popen([sys.executable, "-c", TREE, str(path), "leader", TREE], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert leader.stdout.readline() == "mapped\n"
        deadline = time.monotonic() + 30
        while not Path(f"{path}.child").exists() or len(job_processes(leader.pid)) < 2:
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.01)
        processes = job_processes(leader.pid)
        child = [p for p in processes if p != leader.pid][0]
        assert os.getsid(child) == child  # in a session of its own, as a Hydra rank is
        while f"{path}.child" not in Path(f"/proc/{child}/maps").read_text():
            assert time.monotonic() < deadline, "the child never mapped its file"
            time.sleep(0.01)

        kill_job(leader.pid)
        leader.wait(10)
        assert not job_processes(leader.pid)
        assert not path.exists() and not Path(f"{path}.child").exists()
    finally:
        leader.kill()
        leader.communicate()
        for leftover in (path, Path(f"{path}.child")):
            leftover.unlink(missing_ok=True)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm")
def test_a_file_another_process_still_maps_is_left_alone():
    path = shm_path("shared")
    with open(path, "w+b") as fh:  # this test's process maps it too: it is still in use
        fh.truncate(4096)
        held = mmap.mmap(fh.fileno(), 4096)
    job = subprocess.Popen([sys.executable, "-c", TREE.replace('with open(path, "w+b")', 'with open(path, "r+b")'),
                            str(path), "alone", ""], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert job.stdout.readline() == "mapped\n"
        kill_job(job.pid)
        job.wait(10)
        assert path.exists()
    finally:
        held.close()
        job.kill()
        job.communicate()
        path.unlink(missing_ok=True)


def test_a_job_past_its_deadline_is_recorded_killed_and_its_output_kept(tmp_path):
    """communicate_bounded, the harnesses' wait: in time, the output and no stacks; past the
    deadline, the job's processes listed with what they wait in, then every one of them killed,
    and what it printed before still returned."""
    from mpiswarm.launch import communicate_bounded

    quick = subprocess.Popen([sys.executable, "-c", "print('done')"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert communicate_bounded(quick, 30, tmp_path) == ("done\n", "", None)

    hung = subprocess.Popen([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    out, err, stacks = communicate_bounded(hung, 1.0, tmp_path)
    assert time.monotonic() - t0 < 20
    assert out == "started\n"
    assert stacks is not None and f"  {hung.pid} " in stacks and "time.sleep(60)" in stacks
    assert hung.returncode == -9 and job_processes(hung.pid) == []
