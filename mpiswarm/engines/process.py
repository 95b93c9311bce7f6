"""A server process on loopback that a test or a benchmark started: free ports to give it, the
process started in a session of its own (so that stopping it ends everything it spawned) that
gets SIGTERM if the thread that started it dies first, ``/health`` polled against a deadline,
and a stop by the PID of its process group.  No MPI, nothing beyond the standard library: the
engines' modules and the real-engine test tiers share it.

A server's own class (:class:`~mpiswarm.engines.vllm_server.VllmServer`, the llama.cpp tier's
``LlamaServer``) derives from :class:`ServerProcess`; :func:`spawn` starts its process and
:func:`wait_healthy` waits for one or many.

The last-resort signal (Linux ``PR_SET_PDEATHSIG``) comes when the *thread* that started a
server ends, so start servers from a long-lived thread (a test's own), not a short-lived helper.
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
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence

from ..launch import job_processes, kill_job, shared_memory_of

HOST = "127.0.0.1"

_PR_SET_PDEATHSIG = 1


def http_status(url: str, timeout: float) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


# --------------------------------------------------------------------------- ports


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


def port_is_free(port: int) -> bool:
    """Whether nothing is bound to ``port`` on ``HOST`` right now."""
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
        if all(port_is_free(base + offset) for offset in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports on {HOST} in {attempts} tries")


def free_port() -> int:
    """A port on the loopback interface that nothing listens on now."""
    return find_free_port_block(1)


# --------------------------------------------------------------------------- processes


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


#: ``preexec_fn`` for a child that must not outlive the thread that started it (None where
#: the platform has no ``PR_SET_PDEATHSIG``)
DIE_WITH_PARENT = _die_with_parent if _PRCTL is not None else None


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None, *,
          append: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, stdin from /dev/null, stdout and stderr to
    ``log_path`` (appended to with ``append``), with SIGTERM should the starting thread die."""
    with open(log_path, "ab" if append else "wb") as log_file:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, env=None if env is None else dict(env),
                                start_new_session=True,
                                preexec_fn=DIE_WITH_PARENT)


class ServerStartupError(RuntimeError):
    """A server did not become healthy; the message names it, its log and the log's tail."""

    def __init__(self, server: ServerProcess, reason: str) -> None:
        self.server = server
        super().__init__(f"{server.label} on port {server.port} (pid {server.pid}) {reason}; "
                         f"log {server.log_path}:\n{server.log_tail()}")


@dataclass
class ServerProcess:
    """One running server on ``HOST``: its port, process (the leader of its own process
    group, see :func:`spawn`), log and command line."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...]

    #: What messages call the server, e.g. ``vLLM``.
    label: ClassVar[str] = "server"
    #: What :func:`wait_healthy` raises for it.
    startup_error: ClassVar[type[ServerStartupError]] = ServerStartupError
    #: Seconds until ``/health`` must answer 200, between SIGTERM and SIGKILL, between polls.
    startup_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 10.0
    poll_interval: ClassVar[float] = 0.1

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:P``: the server's own routes (``/health``, ``/metrics``, ``/tokenize``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:P/v1``, the OpenAI-compatible base URL."""
        return f"{self.root_url}/v1"

    def is_running(self) -> bool:
        return self.process.poll() is None

    def is_ready(self) -> bool:
        """Whether it serves: ``/health`` answers 200."""
        return http_status(f"{self.root_url}/health", timeout=2.0) == 200

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_healthy(self, timeout: float | None = None) -> float:
        """Wait for ``/health`` 200; return the seconds it took (see :func:`wait_healthy`)."""
        return wait_healthy([self], timeout)

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the server's process group (the group we started it in)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM to the process group, without waiting (:meth:`stop` waits)."""
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM to the process group; once the whole group has exited, or after ``timeout`` s
        (default :attr:`stop_timeout`), SIGKILL to what is left; reap it and return its status.
        ``/dev/shm`` files the group had mapped and left behind are removed."""
        timeout = self.stop_timeout if timeout is None else timeout
        segments = shared_memory_of(job_processes(self.pid))
        deadline = time.monotonic() + timeout
        if self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # A child (vLLM's engine core) finishes its own cleanup (its shared memory) after the
        # leader: give it the rest of the time before the group is killed.
        while job_processes(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # other processes' exits (not our children): nothing to wait on
        kill_job(self.pid, segments=segments)
        return self.process.wait()

    def kill(self) -> int:
        """Kill the server at once (SIGKILL to its group), e.g. to simulate a crashed endpoint;
        what it left in ``/dev/shm`` is removed."""
        kill_job(self.pid)
        return self.process.wait()


def wait_healthy(servers: Sequence[ServerProcess], timeout: float | None = None) -> float:
    """Poll every server until each :meth:`~ServerProcess.is_ready`; return the seconds it
    took.  Raises the server's :attr:`~ServerProcess.startup_error` when one exits, or is not
    ready within ``timeout`` s (default: the first server's ``startup_timeout``)."""
    if not servers:
        return 0.0
    timeout = servers[0].startup_timeout if timeout is None else timeout
    started = time.monotonic()
    deadline = started + timeout
    pending = list(servers)
    while True:
        for server in list(pending):
            if not server.is_running():
                raise server.startup_error(server, f"exited with status {server.process.returncode}"
                                                   " while starting")
            if server.is_ready():
                pending.remove(server)
        if not pending:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise pending[0].startup_error(pending[0], f"was not healthy within {timeout:.0f} s")
        time.sleep(pending[0].poll_interval)  # polling another process's readiness: nothing to wait on


def stop_all(servers: Sequence[ServerProcess]) -> None:
    """Stop servers: SIGTERM to all first, so they shut down in parallel, then reap each."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()
