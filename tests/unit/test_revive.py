"""Endpoints that come back are used again (issue 16, item 6; no MPI): a dead endpoint, or one
down at the start, is looked at every ``revive_interval`` seconds and returns to service once
healthy; the pool keeps when each was lost and came back. Real HTTP on loopback."""
import asyncio
import random
from contextlib import AsyncExitStack

import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer

from mpiswarm.balance import Chunk
from mpiswarm.client import ClientOptions
from mpiswarm.control import WorkSource
from mpiswarm.dispatch import Dispatcher, EndpointPool
from mpiswarm.records import RankStats

from .test_faults_units import Recorder


def server(state, name, on_call=None, delay=0.0):
    """A completions endpoint that is down (503, /health 503) while ``state[name]`` is False."""
    async def health(request):
        return web.Response(status=200 if state[name] else 503)

    async def completions(request):
        if not state[name]:
            return web.json_response({"error": {"message": "loading"}}, status=503)
        body = await request.json()
        state[f"{name}_calls"] += 1
        if on_call:
            on_call(state[f"{name}_calls"])
        await asyncio.sleep(delay)  # B is slow, so that the run outlasts A's return
        return web.json_response({"choices": [{"index": i, "text": f"{name}:{p}", "finish_reason": "stop"}
                                              for i, p in enumerate(body["prompt"])]})

    app = web.Application()
    app.add_routes([web.get("/health", health), web.post("/v1/completions", completions)])
    return TestServer(app, host="127.0.0.1")


def test_endpoint_down_at_the_start_joins_once_healthy_and_its_rank_uses_it_again():
    state = {"a": False, "b": True, "a_calls": 0, "b_calls": 0}

    def b_called(count):
        if count == 3:  # A finishes loading while B serves A's rank
            state["a"] = True

    async def go():
        async with server(state, "a") as a, server(state, "b", b_called, delay=0.02) as b:
            urls = [str(a.make_url("/v1")), str(b.make_url("/v1"))]
            options = ClientOptions(model="m", batch_size=1, concurrency=1)
            prompts = [f"p{i}" for i in range(60)]
            chunk = Chunk.new(np.arange(60), prompts, [""] * 60, 1, 0)
            source = WorkSource(batch_size=1, concurrency=1, cap=None)
            source.add(chunk)
            stats = RankStats(rank=0, host="h", endpoint=urls[0])
            async with AsyncExitStack() as stack:
                pool = EndpointPool(urls, options, stack)
                pool.declare_dead(urls[0], "not healthy at the start: HTTP 503")
                d = Dispatcher(pool, stats, sleep=Recorder(), rng=random.Random(1), revive_interval=0.01)
                await d.run(source, {"max_tokens": 4})
                return chunk.results, pool, urls

    results, pool, urls = asyncio.run(go())
    assert results.ok.all()
    served_by = [c.split(":")[0] for c in results.completion]
    assert served_by[:3] == ["b"] * 3 and served_by[-1] == "a" and state["a_calls"] > 0
    assert not pool.dead
    assert [(e["url"], e["event"]) for e in pool.events] == [(urls[0], "lost"), (urls[0], "back")]
    record = pool.own_endpoint_record()
    assert record["n_endpoint_lost"] == record["n_endpoint_back"] == 1
    assert 0 <= record["t_endpoint_lost"] <= record["t_endpoint_back"]


def test_without_a_revive_interval_a_dead_endpoint_stays_dead():
    state = {"a": False, "b": True, "a_calls": 0, "b_calls": 0}

    async def go():
        async with server(state, "a") as a, server(state, "b", lambda count: state.update(a=True)) as b:
            urls = [str(a.make_url("/v1")), str(b.make_url("/v1"))]
            chunk = Chunk.new(np.arange(10), [f"p{i}" for i in range(10)], [""] * 10, 1, 0)
            source = WorkSource(batch_size=1, concurrency=1, cap=None)
            source.add(chunk)
            async with AsyncExitStack() as stack:
                pool = EndpointPool(urls, ClientOptions(model="m", batch_size=1, concurrency=1), stack)
                pool.declare_dead(urls[0], "down")
                await Dispatcher(pool, RankStats(rank=0, host="h", endpoint=urls[0]), sleep=Recorder()).run(
                    source, {"max_tokens": 4})
                return chunk.results, pool

    results, pool = asyncio.run(go())
    assert results.ok.all() and state["a_calls"] == 0 and list(pool.dead) and len(pool.events) == 1
