"""The in-process simulator: several endpoints in one event loop, or in a background thread.

:class:`SimServer` runs one :class:`~mpiswarm.sim.endpoint.Endpoint` per port in the current
event loop; :func:`run_in_thread` runs them from a background thread for tests and demos and
yields a :class:`SimHandle` (URLs, ports, counters). :func:`~mpiswarm.sim.process.start_process`
runs them in a subprocess instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future

from aiohttp import web

from .endpoint import Endpoint
from .model import SimConfig

SHUTDOWN_TIMEOUT_S = 2.0  # bound on waiting for handlers at shutdown


def url_host(host: str) -> str:
    """How clients should address ``host`` in a URL (wildcards become this host's name)."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


class SimServer:
    """``count`` endpoints in the current event loop, on ports ``port..port+count-1``.

    ``port=0`` gives each endpoint its own free port.
    """

    def __init__(self, config: SimConfig, count: int = 1, host: str = "127.0.0.1", port: int = 0):
        config.check_count(count)
        self.config = config
        self.host = host
        self.port = port
        self.endpoints = [Endpoint(config, i) for i in range(count)]
        self.ports: list[int] = []
        self._runners: list[web.AppRunner] = []

    @property
    def urls(self) -> list[str]:
        """Base URLs (``http://host:port/v1``) of the listening endpoints."""
        return [f"http://{url_host(self.host)}:{p}/v1" for p in self.ports]

    async def start(self) -> list[str]:
        """Listen on every port (all or none: an ``OSError`` stops what started)."""
        try:
            for i, endpoint in enumerate(self.endpoints):
                runner = web.AppRunner(endpoint.build_app(), access_log=None,
                                       handler_cancellation=True,
                                       shutdown_timeout=SHUTDOWN_TIMEOUT_S)
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, self.host, self.port + i if self.port else 0)
                await site.start()
                self.ports.append(runner.addresses[0][1])
        except BaseException:
            await self.stop()
            raise
        for endpoint in self.endpoints:
            endpoint.faults.start()
        return self.urls

    async def stop(self) -> None:
        """Close every endpoint; pending and held calls are dropped."""
        while self._runners:
            await self._runners.pop().cleanup()


class SimHandle:
    """What :func:`run_in_thread` yields: the endpoints' URLs, ports and counters."""

    def __init__(self, server: SimServer, loop: asyncio.AbstractEventLoop):
        self._server = server
        self._loop = loop
        self.urls: list[str] = server.urls
        self.ports: list[int] = list(server.ports)

    def stats(self, i: int = 0) -> dict:
        """Counters of endpoint ``i``: ``http_requests``, ``responses_ok``, ``prompts``,
        ``choices``, tokens, ``faults`` by kind, ``running``/``waiting``/``max_running``…"""
        endpoint = self._server.endpoints[i]
        if not self._loop.is_running():  # the server has stopped
            return endpoint.snapshot()

        async def snapshot() -> dict:  # taken in the server's thread, never mid-update
            return endpoint.snapshot()

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(10.0)


@contextlib.contextmanager
def run_in_thread(config: SimConfig | None = None, count: int = 1, *,
                  timeout: float = 30.0) -> Iterator[SimHandle]:
    """Serve ``count`` endpoints on free 127.0.0.1 ports from a background thread.

    Returns once all are listening; stops them (and the thread) on exit.
    """
    config = config or SimConfig()
    config.check_count(count)
    ready: Future = Future()
    state: dict = {}

    async def serve() -> None:
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        server = SimServer(config, count, "127.0.0.1", 0)
        try:
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(server)
        try:
            await state["stop"].wait()
        finally:
            await server.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="mpiswarm-sim", daemon=True)
    thread.start()
    server = ready.result(timeout)
    try:
        yield SimHandle(server, state["loop"])
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"simulator thread did not stop within {timeout} s")
