"""StopRequest under signals that cut into it (issue 16, item 7: the SIGTERM jobs flake).

At the walltime PBS signals the whole job and the job script passes SIGTERM on to ``mpiexec``
as well, so ``mpiexec`` forwards two SIGTERMs to every rank a few milliseconds apart (strace of
the jobs test: the proxy's ``kill(-rank, SIGTERM)`` twice, 7 ms apart, where the script alone
signalled gives one). A Python signal handler runs in the main thread between two bytecodes of
whatever it was doing: the second SIGTERM can run ``request`` while the first one's ``request``
(or the control plane's, for a STOP from rank 0) is half done. When ``request`` held a
``threading.Lock`` there, the nested handler waited for a lock its own thread held, and the rank
never ended: mpiswarm still running 10 s after SIGTERM, killed by ``jobs/lib.sh``.

Each case runs in a child Python, so that a hang is bounded (faulthandler ends the child after
10 s with its stack) and does not take the test process with it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import asyncio, faulthandler, os, signal, sys
faulthandler.dump_traceback_later(10, exit=True)  # a hang ends here, stack on stderr
from mpiswarm.stop import StopRequest

FIRST = sys.argv[1]  # who asks first: 'signal' (SIGTERM) or 'control' (a STOP from rank 0)

async def main():
    stop = StopRequest(None)
    stop.install()
    event = stop.event()
    loop = asyncio.get_running_loop()
    wake = loop.call_soon_threadsafe
    cut_in = []

    def second_sigterm_inside_request(*args):  # request() is under way: the next SIGTERM lands
        if not cut_in:
            cut_in.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):  # bytecodes: Python runs the pending handler among them
                pass
        return wake(*args)

    loop.call_soon_threadsafe = second_sigterm_inside_request
    if FIRST == "signal":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        stop.request("SIGTERM received (on rank 0)")
    await asyncio.wait_for(event.wait(), 5)
    stop.detach()
    print("stopped:", stop.reason, "| nested:", bool(cut_in))

asyncio.run(main())
"""


@pytest.mark.parametrize("first", ["signal", "control"])
def test_a_sigterm_that_cuts_into_a_stop_request_does_not_hang_the_rank(first):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", CHILD, first], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr  # before the fix: the child's stack, in request()
    expected = "SIGTERM received" if first == "signal" else "SIGTERM received (on rank 0)"
    assert res.stdout.strip() == f"stopped: {expected} | nested: True"


def test_a_stop_requested_before_the_loop_runs_sets_its_event():
    """A SIGTERM during the health check (no loop waiting yet) stops the requests at once."""
    import asyncio

    from mpiswarm.stop import StopRequest

    stop = StopRequest(None)
    stop.request("SIGTERM received")
    stop.request("--time-limit reached")  # the first reason stays

    async def main():
        event = stop.event()
        await asyncio.wait_for(event.wait(), 1)
        stop.detach()
        stop.request("SIGINT received")  # detached: nothing to wake, nothing raised

    asyncio.run(main())
    assert stop.reason == "SIGTERM received"
