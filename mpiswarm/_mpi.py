"""Every MPI call mpiswarm makes lives here (as mpi4py's ``futures/_core.py`` does).

The rest of the package is MPI-free and testable without ``mpiexec``. Functions take a
communicator argument that defaults to ``COMM_WORLD`` when ``None``; nothing is fixed at
import time. Arrays travel with the buffer interface (``Scatterv``/``Gatherv``); only small
control values (counts, status, statistics) are pickled.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

ROOT = 0
ABORT_GRACE_S = 0.2


def world(comm=None):
    """The communicator to use: ``comm`` or ``COMM_WORLD``."""
    return MPI.COMM_WORLD if comm is None else comm


def wtime() -> float:
    return MPI.Wtime()


def hostname() -> str:
    try:
        return MPI.Get_processor_name()
    except MPI.Exception:  # pragma: no cover - defensive
        return socket.gethostname()


def local_rank(comm=None) -> int:
    """Rank within the node, from a ``COMM_TYPE_SHARED`` split."""
    node = world(comm).Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def bcast(obj, comm=None):
    return world(comm).bcast(obj, root=ROOT)


def allgather(obj, comm=None) -> list:
    return world(comm).allgather(obj)


def scatter(values: list | None, comm=None):
    """Element r of ``values`` (given on the root) to rank r; small values only (pickled)."""
    return world(comm).scatter(values, root=ROOT)


def gather(obj, comm=None) -> list | None:
    return world(comm).gather(obj, root=ROOT)


def allreduce_max(value: int, comm=None) -> int:
    return world(comm).allreduce(value, op=MPI.MAX)


def allreduce_sum_array(values: np.ndarray, comm=None) -> np.ndarray:
    """The element-wise sum over the ranks of ``values`` (int64, the same length everywhere)."""
    send = np.ascontiguousarray(values, dtype=np.int64)
    out = np.empty_like(send)
    world(comm).Allreduce(send, out, op=MPI.SUM)
    return out


def exscan_sum(value: int, comm=None) -> int:
    """The sum of ``value`` over the ranks before this one (0 on the first rank): ``MPI_Exscan``."""
    comm = world(comm)
    send = np.array([value], dtype=np.int64)
    recv = np.zeros(1, dtype=np.int64)
    comm.Exscan(send, recv, op=MPI.SUM)
    return int(recv[0]) if comm.Get_rank() else 0


def barrier(comm=None) -> None:
    world(comm).Barrier()


def _displacements(counts: np.ndarray) -> np.ndarray:
    displ = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=displ[1:])
    return displ


def scatterv(sendbuf: np.ndarray | None, counts: np.ndarray | None, dtype, comm=None) -> np.ndarray:
    """Scatter consecutive pieces of ``sendbuf`` (root only), ``counts[r]`` elements to rank r."""
    comm = world(comm)
    mine = comm.scatter(None if counts is None else [int(c) for c in counts], root=ROOT)
    recv = np.empty(mine, dtype=dtype)
    if comm.Get_rank() == ROOT:
        counts = np.asarray(counts, dtype=np.int64)
        send = [np.ascontiguousarray(sendbuf, dtype=dtype), (counts, _displacements(counts))]
    else:
        send = None
    comm.Scatterv(send, recv, root=ROOT)
    return recv


def gatherv(array: np.ndarray, comm=None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gather every rank's 1-D ``array`` on the root, concatenated in rank order.

    Returns ``(values, counts)`` on the root and ``(None, None)`` elsewhere.
    """
    comm = world(comm)
    array = np.ascontiguousarray(array)
    counts = comm.gather(len(array), root=ROOT)
    if comm.Get_rank() != ROOT:
        comm.Gatherv(array, None, root=ROOT)
        return None, None
    counts = np.asarray(counts, dtype=np.int64)
    out = np.empty(int(counts.sum()), dtype=array.dtype)
    comm.Gatherv(array, [out, (counts, _displacements(counts))], root=ROOT)
    return out, counts


def abort(message: str, code: int = 1, comm=None) -> None:
    """Print ``message`` prefixed with this rank and host, then abort the whole job."""
    comm = world(comm)
    print(f"mpiswarm: rank {comm.Get_rank()} on {hostname()}: {message}", file=sys.stderr, flush=True)
    comm.Abort(code)


def abort_on_exception(exc: BaseException, comm=None) -> None:
    """The abort guard's action: one line naming rank, host and cause, then the traceback —
    written at once, since the launcher may stop forwarding output as soon as the job aborts."""
    comm = world(comm)
    line = f"mpiswarm: rank {comm.Get_rank()} on {hostname()}: aborting the job: {type(exc).__name__}: {exc}\n"
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    sys.stderr.write(line + trace + line)
    sys.stderr.flush()
    _unlink_node_segments()
    time.sleep(ABORT_GRACE_S)  # lets the launcher's proxy read the pipe before MPI_Abort tears it down
    comm.Abort(1)


def _unlink_node_segments() -> None:
    """Remove the names of MPICH's shared-memory segments of this node, which an aborted job
    leaves in ``/dev/shm`` (a few MB of RAM each, until the node is cleaned). Every rank of the
    node mapped them in ``MPI_Init``: the memory stays theirs until they end."""
    from .launch import shared_memory_of

    for path in shared_memory_of([os.getpid()]):
        if path.name.startswith("mpich_shm_"):
            with contextlib.suppress(OSError):
                path.unlink()


def exit_together(code: int) -> None:
    """End this rank's process with ``code`` once every rank is ready to, all within moments of
    each other: stdio flushed, a barrier, ``MPI_Finalize``, then the C library's ``exit`` (the
    interpreter's teardown skipped: everything is written and closed by now). Not ``os._exit``:
    MPICH finishes with its proxy in C ``atexit`` handlers, and without them Hydra takes the
    rank for dead and SIGKILLs the others (16 of 30 four-rank runs).

    Why: once a job has been signalled (SIGTERM at the walltime), MPICH's Hydra proxy SIGKILLs
    every rank still running as soon as the first one exits. A rank whose teardown (freeing a
    million rows' strings) took a second longer than another's was killed, and ``mpiexec``
    reported signal 9 instead of the job's exit 75 — the code job scripts resubmit on."""
    sys.stdout.flush()
    sys.stderr.flush()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        who = f"rank {MPI.COMM_WORLD.Get_rank()} on {hostname()}"  # nothing of MPI works after Finalize
        MPI.COMM_WORLD.Barrier()
        try:
            MPI.Finalize()
        except MPI.Exception as exc:  # a bug, but the answers are written: keep the job's code
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"mpiswarm: {who}: MPI_Finalize failed: {last.strip()}", file=sys.stderr, flush=True)
    ctypes.CDLL(None).exit(code)


def rank_and_size(comm=None) -> tuple[int, int]:
    comm = world(comm)
    return comm.Get_rank(), comm.Get_size()


class Mailbox:
    """Non-blocking point-to-point byte messages, polled from an event loop.

    With the ``mpich`` wheel one-sided operations make no progress while the target is busy
    outside MPI; polling ``Iprobe`` from every rank's event loop does (DESIGN.md §3).
    """

    def __init__(self, comm=None):
        self.comm = world(comm)
        self._sends: list[tuple[MPI.Request, bytes]] = []

    def send(self, dest: int, tag: int, payload: bytes = b"") -> None:
        """Start sending ``payload``; the buffer is kept until the send completes."""
        self._sends.append((self.comm.Isend([payload, MPI.BYTE], dest=dest, tag=tag), payload))
        self._sends = [(r, b) for r, b in self._sends if not r.Test()]

    def poll(self, tag: int, source: int = MPI.ANY_SOURCE) -> tuple[int, bytes] | None:
        """One waiting message ``(source, payload)`` with ``tag``, or None."""
        status = MPI.Status()
        if not self.comm.Iprobe(source=source, tag=tag, status=status):
            return None
        payload = bytearray(status.Get_count(MPI.BYTE))
        self.comm.Recv([payload, MPI.BYTE], source=status.Get_source(), tag=tag)
        return status.Get_source(), bytes(payload)

    def flush(self) -> None:
        """Wait until every send has completed."""
        MPI.Request.Waitall([r for r, _ in self._sends])
        self._sends.clear()

    def receive(self, source: int, tag: int) -> bytes:
        """The next message from ``source`` with ``tag``, waiting for it (it must be on its way)."""
        status = MPI.Status()
        self.comm.Probe(source=source, tag=tag, status=status)
        payload = bytearray(status.Get_count(MPI.BYTE))
        self.comm.Recv([payload, MPI.BYTE], source=source, tag=tag)
        return bytes(payload)

    async def bcast(self, flags: np.ndarray, poll_s: float = 0.001) -> None:
        """``flags`` (a uint8 array of the same length everywhere) from the root to every rank,
        in place, without blocking the event loop."""
        request = self.comm.Ibcast(flags, root=ROOT)
        while not request.Test():
            await asyncio.sleep(poll_s)


def allreduce_argmax(counts: np.ndarray, comm=None) -> np.ndarray:
    """For each entry of ``counts`` (one array per rank, same length), the rank whose count is
    largest — the lowest such rank on a tie (``MPI_MAXLOC``). Every rank gets the result."""
    comm = world(comm)
    pairs = np.empty(len(counts), dtype=[("count", np.int32), ("rank", np.int32)])
    pairs["count"] = counts
    pairs["rank"] = comm.Get_rank()
    best = np.empty_like(pairs)
    comm.Allreduce([pairs, MPI.TWOINT], [best, MPI.TWOINT], op=MPI.MAXLOC)
    return best["rank"].astype(np.int64)


def alltoall(per_rank: list, comm=None) -> list:
    """Element r of ``per_rank`` to rank r; returns what every rank sent here, in rank order
    (pickled: for the few values that cross ranks in a tree reduction)."""
    return world(comm).alltoall(per_rank)


def allreduce_any(flag: bool, comm=None) -> bool:
    """Whether ``flag`` is true on any rank."""
    return bool(world(comm).allreduce(bool(flag), op=MPI.LOR))


# --- Sleeping waits (issue 7) ---------------------------------------------------------------
#: How long a waiting rank sleeps between tests of its request. MPICH's blocking calls spin:
#: a rank that is done early burns a core in Barrier/Gatherv, which on an oversubscribed node
#: (ranks + endpoints or simulators sharing cores) is taken from the ranks still working.
WAIT_POLL_S = 0.001


def _wait_sleeping(request, poll_s: float = WAIT_POLL_S) -> None:
    while not request.Test():
        time.sleep(poll_s)


def barrier_sleeping(comm=None, poll_s: float = WAIT_POLL_S) -> None:
    """A barrier that sleeps between tests (``Ibarrier`` + ``Test``) instead of spinning."""
    _wait_sleeping(world(comm).Ibarrier(), poll_s)


def gatherv_bytes(payload: bytes | np.ndarray, comm=None, poll_s: float = WAIT_POLL_S):
    """Gather every rank's byte message on the root in ONE ``Igatherv``.

    Returns ``(buffer, offsets)`` on the root — the messages one after the other in rank order
    and where each starts — and ``(None, None)`` elsewhere. The other ranks sleep between tests
    while the root receives (the root waits in ``Wait``: it is the one copying).
    """
    comm = world(comm)
    send = _as_bytes(payload)
    root = comm.Get_rank() == ROOT
    counts = np.empty(comm.Get_size() if root else 0, dtype=np.int64)
    # everyone sleeps until every message is ready (the root too: it would spin on the cores
    # the others pack their messages with)
    _wait_sleeping(comm.Igather(np.array([len(send)], dtype=np.int64), counts if root else None, root=ROOT), poll_s)
    if not root:
        _wait_sleeping(comm.Igatherv(send, None, root=ROOT), poll_s)
        return None, None
    displ = _displacements(counts)
    out = np.empty(int(counts.sum()), dtype=np.uint8)
    comm.Igatherv(send, [out, (counts, displ)], root=ROOT).Wait()
    return out, displ


def _as_bytes(payload) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8) if isinstance(payload, (bytes, bytearray)) else payload


#: Tag of :func:`alltoallv_bytes`' messages (the control plane uses 71-74 on the same communicator).
ALLTOALL_TAG = 91


def alltoallv_bytes(messages: list, comm=None, poll_s: float = WAIT_POLL_S) -> tuple[np.ndarray, np.ndarray]:
    """Message r of ``messages`` (bytes, one per rank) to rank r.

    Returns ``(buffer, offsets)``: what every rank sent here, one message after the other in
    rank order, and where each non-empty one starts. The sizes go round in one ``Ialltoall``
    (ranks that arrive early sleep there: they would spin on the cores the others pack with);
    then every non-empty message moves point to point, straight from the sender's bytes into
    its place in the receive buffer. (MPICH's ``Alltoallv`` moved 200 MB from a rank to itself
    at ~0.4 GB/s, and the send buffer it needs is one more copy; a rank of a virtual layout
    sends to the few blocks it holds rows of.)
    """
    comm = world(comm)
    sends = [_as_bytes(m) for m in messages]
    send_counts = np.fromiter(map(len, sends), dtype=np.int64, count=len(sends))
    recv_counts = np.empty_like(send_counts)
    _wait_sleeping(comm.Ialltoall(send_counts, recv_counts), poll_s)
    recv_displ = _displacements(recv_counts)
    out = np.empty(int(recv_counts.sum()), dtype=np.uint8)
    sources = np.flatnonzero(recv_counts).tolist()
    # a message over message_byte_limit() moves as several, in order (MPI does not let messages
    # of one sender, tag and communicator overtake each other): no count passes a C int
    piece = message_byte_limit()
    requests = [comm.Irecv([out[a:min(a + piece, int(recv_displ[r] + recv_counts[r]))], MPI.BYTE], source=r,
                           tag=ALLTOALL_TAG)
                for r in sources for a in range(int(recv_displ[r]), int(recv_displ[r] + recv_counts[r]), piece)]
    requests += [comm.Isend([m[a:a + piece], MPI.BYTE], dest=r, tag=ALLTOALL_TAG)
                 for r, m in enumerate(sends) for a in range(0, len(m), piece)]
    MPI.Request.Waitall(requests)
    return out, recv_displ[sources]


#: The most bytes one collective or message moves (every round of the gathers, the virtual
#: layout's redistribution, the parallel reader's merge and the scatter is sized to it): MPI's
#: counts and displacements are C ints, so more than 2 GiB must be cut into rounds.
GATHER_ROUND_BYTES = 1 << 30
#: the environment variable that overrides :data:`GATHER_ROUND_BYTES` (tests set a small one)
MAX_MESSAGE_BYTES_ENV = "MPISWARM_MAX_MESSAGE_BYTES"


def message_byte_limit() -> int:
    """The most bytes one round may move: ``MPISWARM_MAX_MESSAGE_BYTES`` if set, else
    :data:`GATHER_ROUND_BYTES`; never above 2^31 - 1 (a C int)."""
    value = os.environ.get(MAX_MESSAGE_BYTES_ENV, "").strip()
    limit = int(value) if value.isdigit() and int(value) > 0 else GATHER_ROUND_BYTES
    return min(limit, (1 << 31) - 1)


def gather_bytes_in_rounds(payload: bytes, comm=None, round_bytes: int | None = None) -> list[bytes] | None:
    """Every rank's byte message, of any size, on the root: a list in rank order (None elsewhere).

    Each round is one :func:`gatherv_bytes` of at most ``round_bytes`` (default
    :func:`message_byte_limit`) in all, every rank sending the next piece of its message (at
    most ``round_bytes // size`` bytes); small messages take one round.
    """
    comm = world(comm)
    size = comm.Get_size()
    quota = max(1, (message_byte_limit() if round_bytes is None else round_bytes) // size)
    rounds = max(1, -(-allreduce_max(len(payload), comm) // quota))
    view = memoryview(payload)
    pieces = [[] for _ in range(size)] if comm.Get_rank() == ROOT else None
    for k in range(rounds):
        buffer, offsets = gatherv_bytes(np.frombuffer(view[k * quota:(k + 1) * quota], np.uint8), comm)
        if pieces is not None:
            bounds = offsets.tolist() + [len(buffer)]
            for r in range(size):
                pieces[r].append(buffer[bounds[r]:bounds[r + 1]])
    return None if pieces is None else [b"".join(p) for p in pieces]
