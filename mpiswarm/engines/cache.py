"""The machine's cache of real engines (``$MPISWARM_CACHE`` or ``~/.cache/mpiswarm``) and the
lock that lets one process at a time make an entry of it (a llama-server build, a vLLM
environment) while the others wait and then find it made, and the log of the steps that make
one (:class:`BuildLog`).  Standard library only."""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

Log = Callable[[str], None]


def cache_root() -> Path:
    """The mpiswarm cache directory: ``$MPISWARM_CACHE`` or ``~/.cache/mpiswarm``."""
    configured = os.environ.get("MPISWARM_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mpiswarm"


@contextlib.contextmanager
def exclusive_lock(lock_file: BinaryIO, log: Log, waiting: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file``; when another process holds it, ``log``
    the line ``waiting`` once and wait for it."""
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(waiting)
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


#: Seconds between progress lines while a long step runs.
HEARTBEAT_SECONDS = 30.0


def stamp(name: str, message: str) -> str:
    """A progress line: ``[HH:MM:SS] name: message``."""
    return f"[{time.strftime('%H:%M:%S')}] {name}: {message}"


class BuildLog:
    """Runs the steps that make a cache entry, sending their output to one log file, with a
    progress line every :data:`HEARTBEAT_SECONDS` while a step runs.  A failed step raises
    ``error("<what> failed at step '<step>': <detail>; full log: <path>")`` (one line) after
    echoing the log's last lines to ``log``."""

    def __init__(self, log_path: Path, log: Log, name: str, what: str,
                 error: Callable[[str], Exception]) -> None:
        self.log_path = log_path
        self.log = log
        self.name, self.what, self.error = name, what, error

    def note(self, message: str) -> None:
        self.log(stamp(self.name, message))
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def fail(self, step: str, detail: str) -> Exception:
        self._echo_log_tail()
        return self.error(f"{self.what} failed at step '{step}': {detail}; full log: {self.log_path}")

    def run(self, step: str, argv: Sequence[str], cwd: Path | None = None,
            env: dict[str, str] | None = None) -> None:
        """Run one step's command, logging its output; raise on a non-zero exit."""
        self.note(f"{step}: {' '.join(argv)}")
        started = time.monotonic()
        with open(self.log_path, "ab") as out:
            try:
                # Own process group, so an interrupted step is ended with all its
                # children (make, compilers, pip's builds), not just the top command.
                proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                raise self.fail(step, f"cannot run {argv[0]}: {exc}") from exc
            try:
                while True:
                    try:
                        returncode = proc.wait(timeout=HEARTBEAT_SECONDS)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = time.monotonic() - started
                        self.log(stamp(self.name, f"{step}: still running after {elapsed:.0f} s"
                                                  f" ({self._last_progress_line()})"))
            finally:
                if proc.poll() is None:  # interrupted: do not leave the step running
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if returncode != 0:
            raise self.fail(step, f"command exited with status {returncode}")
        self.note(f"{step}: done in {time.monotonic() - started:.1f} s")

    def _last_progress_line(self) -> str:
        for line in reversed(self._tail(40)):
            line = line.strip()
            if line:
                return line[:120]
        return "no output yet"

    def _tail(self, count: int) -> list[str]:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 16384))
                return fh.read().decode("utf-8", "replace").splitlines()[-count:]
        except OSError:
            return []

    def _echo_log_tail(self) -> None:
        lines = self._tail(25)
        if lines:
            self.log(stamp(self.name, f"last lines of {self.log_path}:"))
            for line in lines:
                self.log("    " + line)
