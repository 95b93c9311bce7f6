"""One job per output: a lock file beside it, ``OUT.h5.lock``, kept fresh by a heartbeat.

The lock names its holder — host, PID, PBS job id (``PBS_JOBID``), start time — in a small JSON
file created with ``O_CREAT | O_EXCL`` (atomic on Lustre and NFS, where ``flock`` may not work
across nodes). While the job runs a daemon thread touches the file's mtime every
``heartbeat_s`` seconds (one ``utime`` call: nothing for a 2-core node to notice). Another job
that finds the lock fresh is refused (:class:`OutputLocked`, an input error: exit 2, nothing
sent); a lock is taken over, with a message, when its heartbeat has stopped for
:data:`STALE_BEATS` beats (its holder was killed: ``kill -9``, a node failure, the walltime) or,
sooner, when its holder ran on this host and its process is gone (so that the same command run
again at once after a kill resumes, as it always did). No MPI here: the root holds the lock for
the whole job.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass

from .inputs import InputError
from .launch import is_running

#: seconds between heartbeats (``MPISWARM_LOCK_HEARTBEAT_S`` overrides it, for tests)
HEARTBEAT_S = 10.0
HEARTBEAT_ENV = "MPISWARM_LOCK_HEARTBEAT_S"
#: a lock whose mtime is older than this many of its holder's heartbeats is stale
STALE_BEATS = 6


class OutputLocked(InputError):
    """Another job holds the output's lock (its heartbeat is fresh)."""


def lock_path(output: str | os.PathLike) -> str:
    """The lock file of ``output``: ``OUT.h5.lock`` beside it."""
    return os.path.abspath(os.fspath(output)) + ".lock"


def heartbeat_interval() -> float:
    """:data:`HEARTBEAT_S`, or ``MPISWARM_LOCK_HEARTBEAT_S`` when set (a number > 0)."""
    value = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not value:
        return HEARTBEAT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise InputError(f"{HEARTBEAT_ENV}: must be a number of seconds > 0, got {value!r}")
    return seconds


@dataclass
class Holder:
    """Who holds a lock (the file's content)."""

    host: str
    pid: int
    pbs_jobid: str
    started: str  # local time, ISO 8601
    heartbeat_s: float
    token: str  # tells two holders apart (a PID may repeat on another host)

    def describe(self) -> str:
        job = f"PBS job {self.pbs_jobid}" if self.pbs_jobid else "a job outside PBS"
        return f"{job}, PID {self.pid} on {self.host}, started {self.started}"


def _read(path: str) -> tuple[Holder | None, float | None]:
    """(holder, mtime) of the lock at ``path``; (None, None) if there is none; (None, mtime)
    if it cannot be parsed (a holder killed between create and write)."""
    try:
        with open(path, encoding="utf-8") as fh:
            mtime = os.fstat(fh.fileno()).st_mtime
            text = fh.read()
    except FileNotFoundError:
        return None, None
    try:
        return Holder(**json.loads(text)), mtime
    except (ValueError, TypeError):
        return None, mtime


class OutputLock:
    """The lock of one output, held from :meth:`acquire` to :meth:`release` (or ``with``)."""

    def __init__(self, output: str | os.PathLike, heartbeat_s: float | None = None, clock=time.time):
        self.output = os.fspath(output)
        self.path = lock_path(output)
        self.heartbeat_s = heartbeat_interval() if heartbeat_s is None else heartbeat_s
        self.clock = clock
        self.holder: Holder | None = None
        self.took_over: str | None = None  # whom we took the lock from, said once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        """Create the lock file with our holder record; False if one exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(self.holder)))
        return True

    def acquire(self) -> "OutputLock":
        """Take the lock, or raise :class:`OutputLocked` naming the holder; a stale lock is
        taken over (``took_over`` then says whose it was). Starts the heartbeat."""
        self.holder = Holder(host=socket.gethostname(), pid=os.getpid(), pbs_jobid=os.environ.get("PBS_JOBID", ""),
                             started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), heartbeat_s=self.heartbeat_s,
                             token=secrets.token_hex(8))
        for _ in range(3):  # a lock released or taken over while we looked: look again
            if self._create():
                break
            other, mtime = _read(self.path)
            if mtime is None:
                continue  # released meanwhile
            beat = other.heartbeat_s if other is not None else self.heartbeat_s
            age = self.clock() - mtime
            gone = other is not None and other.host == self.holder.host and not is_running(other.pid)
            if age <= STALE_BEATS * beat and not gone:
                who = other.describe() if other is not None else "a job that is still writing it"
                raise OutputLocked(f"{self.output}: in use by {who} (lock {self.path}, heartbeat {age:.0f} s ago); "
                                   "wait for it to end, or use another -o")
            if self._take_over(other, mtime):
                why = (f"its process {other.pid} is gone" if gone
                       else f"no heartbeat for {age:.0f} s (the job was killed?)")
                self.took_over = (f"{self.output}: taking over the lock of "
                                  f"{other.describe() if other else 'an unreadable lock'}: {why}")
                break
        else:
            raise OutputLocked(f"{self.output}: another job is taking the lock {self.path} at the same time")
        self._thread = threading.Thread(target=self._beat, name="mpiswarm-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _take_over(self, stale: Holder | None, mtime: float) -> bool:
        """Move the stale lock aside (one rename: of two jobs taking over, one succeeds) and
        create ours. False if someone else moved it first."""
        aside = f"{self.path}.stale-{self.holder.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved, moved_mtime = _read(aside)
        if (moved.token if moved else None) != (stale.token if stale else None) or moved_mtime != mtime:
            # we moved a fresh lock that another job created after ours went stale: put it back
            os.rename(aside, self.path)
            return False
        os.unlink(aside)
        return self._create()

    def _beat(self) -> None:
        # Event.wait sleeps until the next beat or the release: no polling, stops at once
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # removed under us (or the file system is gone): nothing to keep fresh
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holder is None:
            return
        current, _ = _read(self.path)
        if current is not None and current.token == self.holder.token:
            os.unlink(self.path)
        self.holder = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
