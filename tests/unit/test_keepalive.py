"""TCP keepalive on the client's connections: while a call waits for its answer, the kernel
probes the peer (a dead node is noticed in 90 s, not after --request-timeout). Read from the
kernel's own table of this process's connections (Linux ``/proc/self/net/tcp``: timer 2 is
the keepalive timer), during a call the server holds."""
import asyncio
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mpiswarm.client import KEEPALIVE_IDLE_S, ClientOptions, EndpointClient

TCP_TABLE = Path("/proc/self/net/tcp")
ESTABLISHED, KEEPALIVE_TIMER, USER_HZ = "01", "02", 100


def connections_to(port: int) -> list[dict]:
    """This process's established IPv4 connections whose remote port is ``port``."""
    rows = []
    for line in TCP_TABLE.read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        timer, when = fields[5].split(":")
        if remote_port == port and fields[3] == ESTABLISHED:
            rows.append({"timer": timer, "seconds_to_probe": int(when, 16) / USER_HZ})
    return rows


@pytest.mark.skipif(not TCP_TABLE.exists(), reason="reads Linux's /proc/self/net/tcp")
def test_a_call_waiting_for_its_answer_has_the_kernel_probe_the_server():
    async def scenario():
        entered, release = asyncio.Event(), asyncio.Event()

        async def held(request):  # a long call: the answer comes when the test says so
            entered.set()
            await release.wait()
            return web.json_response({"choices": [{"index": 0, "text": "x", "finish_reason": "stop"}]})

        app = web.Application()
        app.add_routes([web.post("/v1/completions", held)])
        async with TestServer(app, host="127.0.0.1") as server:
            async with EndpointClient(str(server.make_url("/v1")), ClientOptions(model="m")) as client:
                call = asyncio.ensure_future(client.complete(["p"], {"max_tokens": 1}))
                await asyncio.wait_for(entered.wait(), 30)
                seen = connections_to(server.port)
                release.set()
                await call
        return seen

    seen = asyncio.run(scenario())
    assert len(seen) == 1, seen  # the client's one connection (the server's side has the server's port as local)
    assert seen[0]["timer"] == KEEPALIVE_TIMER, seen
    assert 0 < seen[0]["seconds_to_probe"] <= KEEPALIVE_IDLE_S + 1, seen
