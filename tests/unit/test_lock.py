"""One job per output: the lock beside it, its heartbeat, refusal and takeover (no MPI)."""
import json
import os
import threading
import time

import pytest

from mpiswarm.lock import STALE_BEATS, OutputLock, OutputLocked, lock_path


def test_lock_names_its_holder_and_is_removed_on_release(tmp_path, monkeypatch):
    monkeypatch.setenv("PBS_JOBID", "4242.aurora-pbs")
    out = tmp_path / "out.h5"
    with OutputLock(out, heartbeat_s=5) as lock:
        holder = json.loads(open(lock_path(out)).read())
        assert holder["pid"] == os.getpid() and holder["pbs_jobid"] == "4242.aurora-pbs"
        assert holder["host"] and holder["started"] and holder["heartbeat_s"] == 5
        assert lock.took_over is None
    assert not os.path.exists(lock_path(out))


def test_second_holder_is_refused_with_one_line_naming_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PBS_JOBID", "77.pbs")
    out = tmp_path / "out.h5"
    with OutputLock(out, heartbeat_s=5):
        with pytest.raises(OutputLocked) as err:
            OutputLock(out, heartbeat_s=5).acquire()
        message = str(err.value)
        assert "\n" not in message
        assert f"in use by PBS job 77.pbs, PID {os.getpid()}" in message and str(out) in message
        assert os.path.exists(lock_path(out))  # the refused one left it alone
    assert not os.path.exists(lock_path(out))


def test_heartbeat_keeps_the_lock_fresh_and_stops_on_release(tmp_path):
    out = tmp_path / "out.h5"
    path = lock_path(out)
    lock = OutputLock(out, heartbeat_s=0.05).acquire()
    os.utime(path, (1.0, 1.0))  # as if the last beat were long ago
    deadline = time.monotonic() + 10
    while os.stat(path).st_mtime == 1.0:  # the next beat makes it fresh again
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.01)
    with pytest.raises(OutputLocked):
        OutputLock(out, heartbeat_s=0.05).acquire()
    lock.release()
    assert not any(t.name == "mpiswarm-lock-heartbeat" for t in threading.enumerate())


def test_stale_lock_is_taken_over_with_a_message(tmp_path):
    out = tmp_path / "out.h5"
    path = lock_path(out)
    stale = {"host": "x1921c0s1b0n0", "pid": 99999, "pbs_jobid": "1.pbs", "started": "2026-01-01T00:00:00+0000",
             "heartbeat_s": 1.0, "token": "dead"}
    with open(path, "w") as fh:
        json.dump(stale, fh)
    os.utime(path, (time.time() - STALE_BEATS - 5,) * 2)
    with OutputLock(out, heartbeat_s=5) as lock:
        assert "taking over the lock of PBS job 1.pbs, PID 99999 on x1921c0s1b0n0" in lock.took_over
        assert json.loads(open(path).read())["pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == []


def test_lock_just_created_and_not_yet_written_is_not_taken(tmp_path):
    """An empty lock file with a fresh mtime: its creator is writing it; refuse, do not take it."""
    out = tmp_path / "out.h5"
    open(lock_path(out), "w").close()
    with pytest.raises(OutputLocked, match="still writing it"):
        OutputLock(out, heartbeat_s=5).acquire()


def test_release_leaves_a_lock_that_another_job_took_over(tmp_path):
    out = tmp_path / "out.h5"
    lock = OutputLock(out, heartbeat_s=60).acquire()
    os.utime(lock_path(out), (1.0, 1.0))  # our heartbeat stalled (a frozen node)
    other = OutputLock(out, heartbeat_s=60).acquire()
    assert other.took_over
    lock.release()
    assert json.loads(open(lock_path(out)).read())["token"] == other.holder.token
    other.release()
    assert not os.path.exists(lock_path(out))


def test_lock_of_a_process_gone_from_this_host_is_taken_over_despite_a_fresh_heartbeat(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(done.stdout)
    out = tmp_path / "out.h5"
    with OutputLock(out, heartbeat_s=60) as first:
        record = json.loads(open(lock_path(out)).read())
    with open(lock_path(out), "w") as fh:  # as the killed job left it: fresh, naming a dead PID here
        json.dump(dict(record, pid=gone), fh)
    with OutputLock(out, heartbeat_s=60) as lock:
        assert f"its process {gone} is gone" in lock.took_over
    assert first.holder is None


def test_lock_held_on_another_host_is_refused_while_its_heartbeat_is_fresh(tmp_path):
    out = tmp_path / "out.h5"
    other = {"host": "x4711c0s0b0n0", "pid": 1, "pbs_jobid": "", "started": "t", "heartbeat_s": 10.0, "token": "t"}
    with open(lock_path(out), "w") as fh:
        json.dump(other, fh)
    with pytest.raises(OutputLocked, match="on x4711c0s0b0n0"):
        OutputLock(out, heartbeat_s=10).acquire()
