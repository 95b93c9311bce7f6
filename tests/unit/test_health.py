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


def _card(id, parent=None, max_model_len=None, owned_by="vllm"):
    return {"id": id, "object": "model", "owned_by": owned_by, "root": id, "parent": parent,
            "max_model_len": max_model_len}


def test_a_vllm_endpoint_must_serve_the_model():
    """vLLM answers 404 for a model it does not serve: its ids, adapters included."""
    from mpiswarm.client import model_problem

    cards = [_card("tiny", max_model_len=1024), _card("tiny-sql", parent="tiny")]
    assert model_problem(cards, "tiny") is None and model_problem(cards, "tiny-sql") is None
    assert model_problem(cards, "llama-wrong") == "it does not serve --model 'llama-wrong' (it serves: tiny, tiny-sql)"
    # a server that serves any name (llama.cpp's), or cards that cannot be read: taken as they are
    assert model_problem([_card("/models/tiny.gguf", owned_by="llamacpp")], "tiny") is None
    assert model_problem(None, "tiny") is None and model_problem([], "tiny") is None


def test_max_model_len_of_the_model_or_its_parent():
    from mpiswarm.client import card_max_model_len

    cards = [_card("tiny", max_model_len=1024), _card("tiny-sql", parent="tiny"), _card("big", max_model_len=9)]
    assert card_max_model_len(cards, "tiny") == 1024
    assert card_max_model_len(cards, "tiny-sql") == 1024  # an adapter's card has none: its parent's
    assert card_max_model_len(cards, "other") == -1
    assert card_max_model_len([{"id": "x.gguf", "meta": {"n_ctx": 512}}], "tiny") == 512  # the only card


def test_model_cards_from_the_simulator():
    from mpiswarm.sim import SimConfig, run_in_thread

    async def cards(url):
        async with EndpointClient(url, ClientOptions(model="tiny")) as client:
            return await client.model_cards(), await client.max_model_len()

    with run_in_thread(SimConfig(time_scale=0, model="tiny", lora_modules=("tiny-sql",), max_model_len=77)) as sim:
        got, length = asyncio.run(cards(sim.urls[0]))
    assert [(c["id"], c["parent"]) for c in got] == [("tiny", None), ("tiny-sql", "tiny")] and length == 77
