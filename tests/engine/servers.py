"""Running llama.cpp's ``llama-server`` for tests: groups of servers on consecutive
loopback ports, started healthy and always stopped by PID.

Importable without pytest (``from tests.engine.servers import start_servers``), so
tools and other tiers can reuse it; ``conftest.py`` builds its fixtures on it.

A :class:`ServerGroup` gives ``base_port``, ``ports``, ``base_urls``
(``http://127.0.0.1:P/v1``) and ``endpoint_template``
(``http://127.0.0.1:{port}/v1``), matching mpiswarm's
``--endpoint TEMPLATE --base-port P`` convention.  A :class:`ServerFactory`
starts groups on demand and stops all of them in :meth:`ServerFactory.stop_all`.

Servers listen on 127.0.0.1 only, log to a file, are ready (``/health`` 200)
when returned, and are always stopped by PID (SIGTERM, then SIGKILL after a
bound), also when the startup itself fails.  As a last resort they are asked
(Linux ``PR_SET_PDEATHSIG``) to get SIGTERM if the process that started them
dies without stopping them; that signal comes when the *thread* that started a
server ends, so start servers from a long-lived thread (the test's own), not
from a short-lived helper thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Sequence

from mpiswarm.engines import tiny_gguf
from mpiswarm.engines.process import HOST, ServerProcess, http_status

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

_PR_SET_PDEATHSIG = 1


@dataclass
class LlamaServer(ServerProcess):
    """One running ``llama-server`` process."""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def has_bound_its_port(self) -> bool:
        """Whether the server logged that it listens on its port.  Checked before
        trusting ``/health``, which another process on the port could answer."""
        return f"listening on http://{HOST}:{self.port}" in self.log_text()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` s), reap it, return its status."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.wait()

    def kill(self) -> int:
        """Kill the server at once (SIGKILL), e.g. to simulate a crashed endpoint."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        return self.process.wait()


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


def stop_all(servers: Sequence[LlamaServer]) -> None:
    """Stop servers: SIGTERM to all first, so they shut down in parallel, then reap each."""
    for server in servers:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _candidate_range(count: int) -> tuple[int, int]:
    """Ports to draw blocks from: outside the kernel's ephemeral range when possible,
    so outgoing connections do not take them between the probe and the bind."""
    low, high = _ephemeral_port_range()
    if low - 10000 >= 1000 + count:
        return 10000, low - count
    if 65535 - high >= 1000 + count:
        return high + 1, 65536 - count
    return 1024, 65536 - count


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def find_free_port_block(count: int, rng: random.Random | None = None,
                         attempts: int = 200) -> int:
    """Return a port P such that P .. P+count-1 are all free on 127.0.0.1 right now."""
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = rng or random.Random()
    first, last = _candidate_range(count)
    for _ in range(attempts):
        base = rng.randrange(first, last)
        if all(_port_is_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports on {HOST} in {attempts} tries")


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved in the parent, so the child after fork calls it without loading anything.
_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the thread that started it dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


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


class StartupError(RuntimeError):
    """A server did not become healthy."""

    def __init__(self, server: LlamaServer, reason: str) -> None:
        self.server = server
        self.bind_failed = "couldn't bind" in server.log_text()
        super().__init__(f"llama-server on port {server.port} (pid {server.pid}) {reason}; "
                         f"log {server.log_path}:\n{server.log_tail()}")


def _wait_healthy(servers: Sequence[LlamaServer], deadline: float) -> None:
    """Poll ``/health`` of every server until each answers 200, or raise StartupError."""
    pending = list(servers)
    while pending:
        for server in list(pending):
            if not server.is_running():
                raise StartupError(server, f"exited with status {server.process.returncode}"
                                           " during startup")
            if (server.has_bound_its_port()
                    and http_status(server.root_url + "/health", timeout=2.0) == 200):
                pending.remove(server)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise StartupError(pending[0], f"was not healthy within {STARTUP_TIMEOUT:.0f} s")
        time.sleep(0.1)  # poll interval of the bounded loop above


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
                with open(log_path, "wb") as log_file:
                    process = subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=log_file,
                        stderr=subprocess.STDOUT, env=_server_env(),
                        preexec_fn=_die_with_parent if _PRCTL is not None else None)
                servers.append(LlamaServer(port, process, log_path, tuple(argv)))
            _wait_healthy(servers, time.monotonic() + STARTUP_TIMEOUT)
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
