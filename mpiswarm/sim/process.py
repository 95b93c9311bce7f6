"""The simulator in a subprocess: :func:`start_process` launches ``python -m mpiswarm.sim``.

It waits for the command's listening line (:data:`LISTENING_PREFIX`), retries a new port
block when one is taken (:data:`EXIT_ADDRESS_IN_USE`), and returns a :class:`SimProcess`
to stop it by PID.
"""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ..engines.process import DIE_WITH_PARENT, find_free_port_block

LISTENING_PREFIX = "mpiswarm.sim listening on "
"""Start of the one line the command prints (then the endpoint URLs, space separated)."""

EXIT_ADDRESS_IN_USE = 98
"""Exit status of the command when a port is taken (as errno EADDRINUSE on Linux)."""


class SimProcess:
    """A running ``python -m mpiswarm.sim`` (see :func:`start_process`)."""

    def __init__(self, proc: subprocess.Popen, urls: list[str], stderr, pump: threading.Thread):
        self.proc = proc
        self.urls = urls
        self.ports = [int(u.rsplit(":", 1)[1].split("/", 1)[0]) for u in urls]
        self._stderr = stderr
        self._pump = pump

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._pump.join(timeout)
        self._stderr.close()
        return self.proc.returncode

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _AddressInUse(RuntimeError):
    """The child exited with :data:`EXIT_ADDRESS_IN_USE`."""


def start_process(args: Sequence[str], timeout: float = 30.0, *, attempts: int = 5) -> SimProcess:
    """Launch ``python -m mpiswarm.sim *args`` and wait for its listening line. It gets SIGTERM
    if the thread that launched it ends first: launch it from a long-lived thread.

    Without ``--port`` in ``args`` it picks a free block of ``--count`` ports itself,
    and tries a new block if another process took one first (up to ``attempts`` times).
    """
    args = [str(a) for a in args]
    if _option(args, "--port") is not None:
        return _launch(args, timeout)
    count = int(_option(args, "--count") or 1)
    for _ in range(attempts):
        try:
            return _launch([*args, "--port", str(find_free_port_block(count))], timeout)
        except _AddressInUse:
            continue
    raise RuntimeError(f"could not bind {count} consecutive ports in {attempts} attempts")


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _launch(args: list[str], timeout: float) -> SimProcess:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # so the child imports this mpiswarm
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    stderr = tempfile.TemporaryFile(mode="w+")
    # SIGTERM should the starting thread die first (a test run killed): no simulator left listening
    proc = subprocess.Popen([sys.executable, "-m", "mpiswarm.sim", *args], stdout=subprocess.PIPE,
                            stderr=stderr, stdin=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=DIE_WITH_PARENT)
    lines: queue.Queue = queue.Queue()
    pump = threading.Thread(target=_pump_lines, args=(proc.stdout, lines), daemon=True)
    pump.start()
    try:
        urls = _await_listening(proc, lines, timeout)
    except BaseException as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        pump.join(timeout)
        stderr.seek(0)
        tail = stderr.read()[-2000:]
        stderr.close()
        if isinstance(exc, (RuntimeError, TimeoutError)) and tail:
            raise type(exc)(f"{exc}; its stderr ends with:\n{tail}") from None
        raise
    return SimProcess(proc, urls, stderr, pump)


def _pump_lines(stream, lines: queue.Queue) -> None:
    with stream:
        for line in stream:
            lines.put(line)
    lines.put(None)


def _await_listening(proc: subprocess.Popen, lines: queue.Queue, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(
                f"simulator (pid {proc.pid}) not listening after {timeout} s") from None
        if line is None:
            status = proc.wait()
            error = _AddressInUse if status == EXIT_ADDRESS_IN_USE else RuntimeError
            raise error(f"simulator exited with status {status} before listening")
        if line.startswith(LISTENING_PREFIX):
            return line[len(LISTENING_PREFIX):].split()
