"""Endpoint health: /health, the /v1/models fallback, and the deadline (real HTTP on loopback)."""
import asyncio
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mpiswarm.client import ClientOptions, EndpointClient, EndpointUnavailable


async def with_server(routes, check):
    app = web.Application()
    app.add_routes(routes)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/v1"))
        async with EndpointClient(url, ClientOptions(model="m")) as client:
            return await check(client)


async def models(request):
    return web.json_response({"data": [{"id": "m", "max_model_len": 1234}]})


def test_models_fallback_when_no_health_route():
    async def check(client):
        await client.wait_healthy(5)
        return await client.max_model_len()

    assert asyncio.run(with_server([web.get("/v1/models", models)], check)) == 1234


def test_unhealthy_endpoint_times_out_with_the_last_reason():
    async def unhealthy(request):
        return web.Response(status=503)

    async def check(client):
        t0 = time.monotonic()
        with pytest.raises(EndpointUnavailable, match=r"not healthy after 1 s \(last: HTTP 503\)"):
            await client.wait_healthy(1)
        return time.monotonic() - t0

    assert 0.9 < asyncio.run(with_server([web.get("/health", unhealthy)], check)) < 5


def test_becomes_healthy_later():
    calls = []

    async def health(request):
        calls.append(1)
        return web.Response(status=200 if len(calls) >= 3 else 503)

    async def check(client):
        await client.wait_healthy(10)
        return len(calls)

    assert asyncio.run(with_server([web.get("/health", health)], check)) == 3
