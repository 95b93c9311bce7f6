"""A rank whose work cannot come fails; it does not ask again for ever.

The chat job of the 2026-11-23 benchmark that "did not end within 300 s" ran a runner.py caught
between two edits: one rank got no row pool but still fetched from it. Each fetch raised inside
the work source's done callback, where the event loop only logs it; the source fetched again,
failed again, and the job spun until it was killed. A fetch that raises must reach the abort
guard instead (tests/e2e/test_abort.py runs it under mpiexec)."""
from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import numpy as np
import pytest

from mpiswarm.balance import Chunk
from mpiswarm.client import ClientOptions
from mpiswarm.control import WorkSource
from mpiswarm.dispatch import Dispatcher, EndpointPool
from mpiswarm.records import RankStats
from mpiswarm.sim import SimConfig, run_in_thread


class Broken(RuntimeError):
    pass


def chunk(n: int) -> Chunk:
    return Chunk.new(np.arange(n), [f"p{i}" for i in range(n)], [""] * n, 1, 0)


def test_a_fetch_that_raises_is_raised_by_next_call_not_retried_for_ever():
    calls = []

    async def fetch():
        calls.append(1)
        raise Broken("no pool on this rank")

    async def drain_source():
        source = WorkSource(batch_size=1, concurrency=2, cap=4, fetch=fetch, low_water=4)
        source.add(chunk(3))
        taken = 0
        while await source.next_call() is not None:  # before: never None, never raising
            taken += 1
        return taken

    with pytest.raises(Broken, match="no pool on this rank"):
        asyncio.run(asyncio.wait_for(drain_source(), 10))
    assert len(calls) == 1  # asked once, not again and again


class RaisingSource:
    """A work source whose next call raises (as WorkSource does once its fetch has failed)."""

    chunks: list = []

    async def next_call(self):
        raise Broken("control plane gone")

    def stop(self) -> None:
        pass

    async def drain(self) -> None:
        pass


def test_a_worker_that_raises_makes_the_run_raise():
    """Dispatcher.run: a failed call is a record, but a worker that raised (a bug, a broken
    control plane) must reach the caller — before, run returned as if the rows were stopped."""
    with run_in_thread(SimConfig(time_scale=0)) as sim:
        options = ClientOptions(model="sim-model", concurrency=2)

        async def go():
            async with AsyncExitStack() as stack:
                pool = EndpointPool(sim.urls, options, stack)
                d = Dispatcher(pool, RankStats(rank=0, host="h", endpoint=sim.urls[0]), rng=random.Random(1))
                await d.run(RaisingSource(), {"max_tokens": 4}, asyncio.Event())

        with pytest.raises(Broken, match="control plane gone"):
            asyncio.run(asyncio.wait_for(go(), 30))
