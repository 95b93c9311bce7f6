"""The abort guard: an exception on one rank ends the whole job, never a hang."""
import subprocess
import sys
import time

from mpiswarm.launch import find_mpiexec

from ..conftest import finish, leftover_segments, subprocess_env, write_jsonl
from .test_run import endpoint_args, make_rows

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


#: ``mpiswarm`` itself, with rank 1's request for more work broken (as a chunk that cannot be
#: decoded, or a runner that gives a rank no pool and still fetches from it)
BROKEN_FETCH = """
import sys
from mpiswarm import cli, control

original = control.Control._ask_root


async def broken(self):
    if self.rank == 1:
        raise ValueError("injected: this rank's next chunk cannot be had")
    return await original(self)

control.Control._ask_root = broken
sys.argv[0] = "mpiswarm"
cli.entry()
"""


def test_a_rank_whose_work_cannot_come_aborts_the_job_instead_of_asking_for_ever(tmp_path, sim_factory):
    """Issue 16, item 7 (the chat job that did not end): a fetch that raises on one rank ends the
    whole job at once, naming the rank and host; before, that rank asked again and again, and
    rank 0 waited for it for ever."""
    sim = sim_factory("--count", 2, "--time-scale", 0)
    script = tmp_path / "broken_fetch.py"
    script.write_text(BROKEN_FETCH)
    inp = write_jsonl(tmp_path / "in.jsonl", make_rows(200))
    t0 = time.monotonic()
    job = subprocess.Popen([find_mpiexec(), "-n", "2", sys.executable, str(script), "run", str(inp), "-o",
                            str(tmp_path / "out.h5"), *map(str, endpoint_args(sim)), "--schedule", "dynamic", "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                           start_new_session=True)
    res = finish(job, timeout=60)  # past it: every process of the job killed, the test failed
    assert time.monotonic() - t0 < 60
    assert res.returncode != 0
    assert "mpiswarm: rank 1 on " in res.stderr
    assert "aborting the job: ValueError: injected: this rank's next chunk cannot be had" in res.stderr
    assert not (tmp_path / "out.h5").exists()  # nothing half-written at the output
