"""The abort guard: an exception on one rank ends the whole job, never a hang."""
import subprocess
import sys
import time

from mpiswarm.launch import find_mpiexec

from ..conftest import leftover_segments, subprocess_env

SCRIPT = """
import sys
from mpiswarm import _mpi
from mpiswarm.cli import _guarded

def command(args):
    rank, _ = _mpi.rank_and_size()
    if rank == 1:
        raise RuntimeError("injected failure")
    _mpi.barrier()  # every other rank waits here for rank 1, which never comes
    return 0

sys.exit(_guarded(command, None))
"""


def test_exception_on_one_rank_aborts_every_rank(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(SCRIPT)
    started = time.time() - 1  # ctime's granularity
    t0 = time.monotonic()
    res = subprocess.run([find_mpiexec(), "-n", "3", sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, env=subprocess_env())
    assert time.monotonic() - t0 < 60
    assert res.returncode != 0
    assert "mpiswarm: rank 1 on " in res.stderr
    assert "aborting the job: RuntimeError: injected failure" in res.stderr
    assert "Traceback" in res.stderr  # the cause, for the PBS error file
    assert not {p for p in leftover_segments(started) if p.name.startswith("mpich_shm_")}  # MPICH's, unlinked
