"""Running llama.cpp's ``llama-server`` for tests: groups of servers on consecutive
loopback ports, started healthy and always stopped by PID.

``conftest.py`` builds its fixtures on it.  A :class:`ServerGroup` gives ``base_port``,
``ports``, ``base_urls`` (``http://127.0.0.1:P/v1``) and ``endpoint_template``
(``http://127.0.0.1:{port}/v1``), matching mpiswarm's ``--endpoint TEMPLATE --base-port P``
convention.  A :class:`ServerFactory` starts groups on demand and stops all of them in
:meth:`ServerFactory.stop_all`.

The process plumbing — free port blocks, a session of its own and SIGTERM should the starting
thread die, ``/health`` polled against a deadline, SIGTERM then SIGKILL by the PID of its
process group — is :mod:`mpiswarm.engines.process`, shared with the vLLM tier; this module
holds what is llama-server's: its command line, its environment and its readiness (it must
have logged that it listens on its port before its ``/health`` is trusted).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Sequence

from mpiswarm.engines import tiny_gguf
from mpiswarm.engines.process import (HOST, ServerProcess, ServerStartupError, find_free_port_block,
                                      spawn, stop_all, wait_healthy)

__all__ = ["BATCH_INVARIANT_ARGS", "LlamaServer", "ServerFactory", "ServerGroup", "StartupError",
           "find_free_port_block", "server_argv", "start_servers", "stop_all"]

ENDPOINT_TEMPLATE = f"http://{HOST}:{{port}}/v1"

#: Defaults of the servers started here.
DEFAULT_COUNT = 4
DEFAULT_SLOTS = 4
DEFAULT_SEED = 1234

STARTUP_TIMEOUT = 60.0  # seconds until /health must answer 200
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
PORT_BLOCK_ATTEMPTS = 20  # port blocks tried before giving up

#: Extra arguments that make an answer (nearly) independent of the batch it is
#: decoded in.  With flash attention on (llama-server's ``auto`` picks it on CPU),
#: 0.4-0.7 % of greedy 16-token answers in a list differed from the same prompt
#: sent alone in our runs, and up to 5 % of sampled ones.  With it off, none of
#: 3,000 greedy and 6,000 sampled n = 2 answers differed; one sampled n = 1
#: answer in 500 still did.
BATCH_INVARIANT_ARGS = ("--flash-attn", "off")


class StartupError(ServerStartupError):
    """A server did not become healthy (``bind_failed``: it lost its port to another process)."""

    def __init__(self, server: ServerProcess, reason: str) -> None:
        self.bind_failed = "couldn't bind" in server.log_text()
        super().__init__(server, reason)


@dataclass
class LlamaServer(ServerProcess):
    """One running ``llama-server`` process."""

    label: ClassVar[str] = "llama-server"
    startup_error: ClassVar[type[ServerStartupError]] = StartupError
    startup_timeout: ClassVar[float] = STARTUP_TIMEOUT
    stop_timeout: ClassVar[float] = STOP_TIMEOUT
    poll_interval: ClassVar[float] = 0.1

    def has_bound_its_port(self) -> bool:
        """Whether the server logged that it listens on its port.  Checked before
        trusting ``/health``, which another process on the port could answer."""
        return f"listening on http://{HOST}:{self.port}" in self.log_text()

    def is_ready(self) -> bool:
        return self.has_bound_its_port() and super().is_ready()


@dataclass
class ServerGroup:
    """Servers on consecutive ports ``base_port .. base_port + len - 1``."""

    servers: tuple[LlamaServer, ...]
    #: mpiswarm's ``--endpoint`` template for these servers (with ``--base-port``).
    endpoint_template: ClassVar[str] = ENDPOINT_TEMPLATE

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[LlamaServer]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> LlamaServer:
        return self.servers[index]

    @property
    def base_port(self) -> int:
        return self.servers[0].port

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    @property
    def base_urls(self) -> list[str]:
        return [server.base_url for server in self.servers]

    def stop(self) -> None:
        stop_all(self.servers)


def _server_env() -> dict[str, str]:
    # llama-server reads LLAMA_ARG_* variables as defaults for its flags; keep the
    # fixtures' servers independent of whatever the developer's shell has set.
    return {key: value for key, value in os.environ.items() if not key.startswith("LLAMA_ARG_")}


def server_argv(binary: Path, model: Path, port: int, *, slots: int = DEFAULT_SLOTS,
                ctx: int | None = None, seed: int = DEFAULT_SEED, threads: int = 1,
                extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of one test server.

    ``ctx`` is the server's total KV context, which llama-server splits evenly over
    its ``slots``; by default every slot gets the tiny model's full training
    context (``slots * 512``).  ``extra_args`` are appended as they are.
    """
    return [
        str(binary),
        "--model", str(model),
        "--host", HOST,
        "--port", str(port),
        "--parallel", str(slots),
        "--ctx-size", str(ctx if ctx is not None else slots * tiny_gguf.CONTEXT_LENGTH),
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--threads-http", "2",
        "--temp", "0",
        "--seed", str(seed),
        "--no-webui",
        "--no-warmup",
        "--cache-ram", "0",  # no host-memory prompt cache: each server stays small
        *extra_args,
    ]


def start_servers(binary: Path, model: Path, log_dir: Path, count: int = DEFAULT_COUNT,
                  **options: object) -> ServerGroup:
    """Start ``count`` servers on consecutive free ports and wait until all are healthy.

    ``options`` go to :func:`server_argv` (``slots``, ``ctx``, ``seed``, ``threads``,
    ``extra_args``).  If a port was taken between the probe and the bind, the whole
    block is stopped and another one tried.  On any failure every server started
    here is stopped before the exception propagates.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, PORT_BLOCK_ATTEMPTS + 1):
        base = find_free_port_block(count)
        servers: list[LlamaServer] = []
        try:
            for port in range(base, base + count):
                argv = server_argv(binary, model, port, **options)  # type: ignore[arg-type]
                log_path = log_dir / f"llama-server-{port}.log"
                process = spawn(argv, log_path, _server_env())
                servers.append(LlamaServer(port, process, log_path, tuple(argv)))
            wait_healthy(servers)
            return ServerGroup(tuple(servers))
        except StartupError as exc:
            stop_all(servers)
            if exc.bind_failed and attempt < PORT_BLOCK_ATTEMPTS:
                continue  # lost a race for a port: try another block
            raise
        except BaseException:
            stop_all(servers)
            raise
    raise AssertionError("unreachable")


class ServerFactory:
    """Starts server groups on demand: ``factory(count=4, **options) -> ServerGroup``.

    Options: ``slots``, ``ctx``, ``seed``, ``threads``, ``extra_args`` (see
    :func:`server_argv`) and ``model`` (a GGUF path; default: the factory's).
    Group *k* logs to ``log_dir/llama-logs-k``.  :meth:`stop_all` stops every
    group started so far (use it in a ``finally``).
    """

    def __init__(self, binary: Path, model: Path, log_dir: Path) -> None:
        self.binary = Path(binary)
        self.model = Path(model)
        self.log_dir = Path(log_dir)
        self.started: list[ServerGroup] = []

    def __call__(self, count: int = DEFAULT_COUNT, **options: object) -> ServerGroup:
        model = Path(options.pop("model", self.model))  # type: ignore[arg-type]
        group = start_servers(self.binary, model, self.log_dir / f"llama-logs-{len(self.started)}",
                              count, **options)
        self.started.append(group)
        return group

    def stop_all(self) -> None:
        """Stop every server of every group started by this factory."""
        stop_all([server for group in self.started for server in group])
