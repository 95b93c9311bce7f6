"""The run's control plane: work chunks from rank 0 on request, progress back to rank 0.

It lives inside each rank's event loop, beside the HTTP calls, and speaks through
:class:`mpiswarm._mpi.Mailbox` (non-blocking sends, ``Iprobe`` polling), so it progresses while
every rank is busy with HTTP. Protocol:

* a rank whose queue runs low sends ``REQUEST`` (with its progress); rank 0 answers ``WORK``
  with the next guided chunk, a "wait" (ask again shortly: the rank holds enough, or the others
  will finish what is left sooner), or an empty chunk when nothing is left (or the job stops);
* every rank sends ``PROGRESS`` (rows finished, rows answered) about once a second, and ``DONE``
  when it will send nothing more (with how many ``PROGRESS`` and ``STOP`` it sent, so that rank 0
  receives every one of them before the end); rank 0 leaves its loop once every rank is done;
* a rank asked to stop (SIGTERM, ``--time-limit``) tells rank 0 ``STOP``, and rank 0 tells every
  rank not done yet: a signal that reaches one rank late, or only one rank, stops them all
  within a poll.

A rank never sends ``DONE`` with a request outstanding, so every chunk rank 0 hands out is
received, and every row ends up in exactly one rank's results.
"""
from __future__ import annotations

import asyncio
import struct
import time
from typing import Callable

import numpy as np

from ._mpi import Mailbox
from .balance import Chunk, RowQueue, chunk_size, next_call_size
from .inputs import PromptSet
from .codec import pack_rows, unpack_rows
from .rows import RequestRows

TAG_REQUEST, TAG_WORK, TAG_PROGRESS, TAG_DONE, TAG_STOP = 71, 72, 73, 74, 75
ROOT_POLL_S = 0.001
WORKER_POLL_S = 0.001
PROGRESS_EVERY_S = 0.25  # also what rank 0's estimate of each rank's rate is made of
_COUNTS = struct.Struct("<qqd")  # rows finished, rows answered, typical seconds a call takes
_DONE = struct.Struct("<qqdqq")  # _COUNTS, then the PROGRESS and the STOP messages the rank sent
WAIT = object()  # "no chunk for you now, ask again"
_WAIT_MESSAGE = b"W"
WAIT_S = 0.05
MAX_WAIT_S = 30.0  # a safety net only: some rank always qualifies for the next chunk


class WorkSource:
    """Where a rank's calls come from: its queue, refilled by ``fetch`` when it runs low.

    ``fetch`` is a coroutine returning the next :class:`Chunk` or None when no more work will
    come. Without ``fetch`` the source is static: what was added is all there is. ``prepare``,
    if given, sees every chunk before its rows are planned into calls (``--max-tokens auto``
    sets each row's ``max_tokens`` there).
    """

    def __init__(self, *, batch_size: int | None, concurrency: int, cap: int | None,
                 fetch: Callable | None = None, low_water: int = 0, prepare: Callable | None = None,
                 limit: int | None = None):
        self.queue = RowQueue()
        self._prepare = prepare  # prepare(chunk) before its rows are planned into calls
        self.chunks: list[Chunk] = []
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.cap = cap
        self.limit = limit  # no call carries more rows (--max-prompts-per-call)
        self._fetch = fetch
        self.low_water = low_water
        self.exhausted = fetch is None
        self.stopped = False
        self._pending: asyncio.Future | None = None
        self._failed: BaseException | None = None  # what the last fetch raised

    def add(self, chunk: Chunk) -> None:
        if self._prepare is not None:
            self._prepare(chunk)
        self.chunks.append(chunk)
        self.queue.add(chunk)

    def _arrived(self, future: asyncio.Future) -> None:
        self._pending = None
        if not future.cancelled() and future.exception() is not None:
            # Kept for next_call to raise. Raised here, in a done callback, the event loop would
            # only log it, and the source would fetch again and fail again, for ever: a job
            # that spins instead of ending.
            self._failed = future.exception()
            return
        chunk = None if future.cancelled() else future.result()
        if chunk is None:
            self.exhausted = True
        else:
            self.add(chunk)

    def _maybe_fetch(self) -> None:
        if (self.exhausted or self.stopped or self._failed is not None or self._pending is not None
                or self.queue.queued > self.low_water):
            return
        self._pending = asyncio.ensure_future(self._fetch())
        self._pending.add_done_callback(self._arrived)

    async def next_call(self):
        """``(chunk, plan)`` for the next call, or None when this rank has no more work.
        Raises what ``fetch`` raised: a rank whose work cannot come fails (the abort guard
        ends the job, naming it) rather than asking again and again."""
        while not self.stopped:
            if self._failed is not None:
                raise self._failed
            self._maybe_fetch()
            if self.queue.queued:
                final = self.exhausted or self.stopped
                size = next_call_size(self.queue.queued, batch_size=self.batch_size,
                                      concurrency=self.concurrency, cap=self.cap, final=final, limit=self.limit)
                return self.queue.take(size)
            if self._pending is None:
                return None
            await asyncio.wait([self._pending])
        return None

    def stop(self) -> None:
        """Ask for no more work (what was asked for still arrives: see :meth:`drain`)."""
        self.stopped = True

    async def drain(self) -> None:
        """Wait for an outstanding fetch, so its chunk is counted (unanswered) in the results."""
        if self._pending is not None:
            await asyncio.wait([self._pending])


class RowPool:
    """Rank 0's rows not handed out yet, given away in guided chunks, with an eye on each rank's
    rate so that no rank takes work it would still be chewing on when the others are done."""

    def __init__(self, prompt_set: PromptSet | None, todo: np.ndarray, n_ranks: int, minimum: int,
                 limit: int, handed: np.ndarray | None = None):
        self.prompt_set = prompt_set
        self.todo = todo
        self.next = 0
        self.n_ranks = n_ranks
        self.minimum = minimum
        self.limit = limit  # rows a rank may hold unfinished: what keeps its engine full, and no more
        self.open = True
        self.handed = np.zeros(n_ranks, np.int64) if handed is None else handed.astype(np.int64)
        self.start = time.monotonic()
        self._waiting: dict[int, float] = {}  # rank -> when it was first told to wait

    @property
    def remaining(self) -> int:
        return len(self.todo) - self.next if self.open else 0

    def size_for(self, rank: int, finished: np.ndarray, active: np.ndarray | None = None,
                 latency: np.ndarray | None = None) -> int:
        """Rows for ``rank``'s next chunk (0: ask again later).

        A guided share, never more than ``limit`` unfinished rows a rank, and — once every
        rank has shown a rate — only if the rank, at its rate and with its calls' ``latency``,
        finishes them before all ranks together finish everything left, or if it is the
        fastest ``active`` rank.
        A rank told to wait for ``MAX_WAIT_S`` gets its share anyway: the job never stalls.
        """
        now = time.monotonic()
        elapsed = now - self.start
        k, held_back = chunk_size(rank, self.remaining, np.maximum(self.handed - finished, 0),
                       finished / elapsed if elapsed > 0 else np.zeros(self.n_ranks),
                       np.ones(self.n_ranks, bool) if active is None else active, latency,
                       minimum=self.minimum, limit=self.limit,
                       waited_long=now - self._waiting.get(rank, now) >= MAX_WAIT_S)
        if held_back:
            self._waiting.setdefault(rank, now)
        elif k:
            self._waiting.pop(rank, None)
        return k

    def take(self, rank: int, k: int) -> RequestRows:
        """The next ``k`` rows not handed out, for ``rank``."""
        index = self.todo[self.next : self.next + k]
        self.next += len(index)
        self.handed[rank] += len(index)
        return self.prompt_set.rows(index)

    def leftover(self) -> np.ndarray:
        """Rows never handed out (after a stop); none will be from now on."""
        self.open = False
        rest = self.todo[self.next :]
        self.next = len(self.todo)
        return rest


class Control:
    """One rank's side of the control plane (see the module docstring)."""

    def __init__(self, mailbox: Mailbox, rank: int, size: int, n: int):
        self.mailbox = mailbox
        self.rank = rank
        self.size = size
        self.n = n
        self.counts = np.zeros((size, 2), dtype=np.int64)  # root: rows finished, answered, per rank
        self.done = np.zeros(size, dtype=bool)
        self.latency = np.zeros(size)  # root: typical seconds a call takes, per rank
        self.pool: RowPool | None = None
        self.progress: Callable[[], tuple] = lambda: (0, 0, 0.0)  # this rank: (finished, answered, latency)
        #: called with the reason when another rank asked the job to stop (StopRequest.request)
        self.on_stop: Callable[[str], None] = lambda reason: None
        self._told_stop = False
        self._stop_sent_to: list[int] = []  # root: the ranks it told to stop
        self._stop_from_root = False  # non-root: rank 0's STOP received
        self._progress_sent = self._stops_sent = 0  # non-root: PROGRESS and STOP sent to rank 0
        # root: per rank, PROGRESS and STOP messages received, and (from its DONE) how many it sent
        self._received = np.zeros((size, 2), dtype=np.int64)
        self._sent = np.zeros((size, 2), dtype=np.int64)

    def _pass_stop(self, stop: asyncio.Event | None, reason: str) -> None:
        """This rank's stop to rank 0 (non-root), or rank 0's to every rank not done (root): once."""
        if self._told_stop or stop is None or not stop.is_set():
            return
        self._told_stop = True
        payload = reason.encode("utf-8", "replace")
        for dest in ([0] if self.rank else [r for r in range(1, self.size) if not self.done[r]]):
            self.mailbox.send(dest, TAG_STOP, payload)
            if self.rank:
                self._stops_sent += 1
            else:
                self._stop_sent_to.append(dest)

    def _stop_received(self, source: int | None = None) -> None:
        while (got := self.mailbox.poll(TAG_STOP, **({} if source is None else {"source": source}))) is not None:
            said = got[1].decode("utf-8", "replace")
            if self.rank:
                self._told_stop = self._stop_from_root = True  # rank 0 knows: nothing to tell it back
                self.on_stop(said)
            else:
                self._received[got[0], 1] += 1
                self.on_stop(f"{said} (on rank {got[0]})")

    # -- work ----------------------------------------------------------------------------
    def chunk(self, rows: RequestRows) -> Chunk:
        return Chunk.of(rows, self.n, self.rank)

    def _hand_out(self, rank: int):
        """Root: the next chunk's rows for ``rank``; :data:`WAIT` when
        it should ask again later (it holds enough, or others will finish the rest sooner);
        None when nothing is left."""
        if not self.pool.remaining:
            return None
        k = self.pool.size_for(rank, self.counts[:, 0], ~self.done, self.latency)
        return self.pool.take(rank, k) if k else WAIT

    async def fetch(self) -> Chunk | None:
        """The next chunk for this rank (None: no more)."""
        while True:
            if self.rank == 0:
                self._record(0, self.progress())
                got = self._hand_out(0)
            else:
                got = await self._ask_root()
            if got is not WAIT:
                return None if got is None else self.chunk(got)
            await asyncio.sleep(WAIT_S)

    async def _ask_root(self):
        self.mailbox.send(0, TAG_REQUEST, _COUNTS.pack(*self.progress()))
        while (got := self.mailbox.poll(TAG_WORK, source=0)) is None:
            await asyncio.sleep(WORKER_POLL_S)
        if got[1] == _WAIT_MESSAGE:
            return WAIT
        rows = unpack_rows(got[1])
        return rows if len(rows) else None

    def _serve_requests(self) -> None:
        while (got := self.mailbox.poll(TAG_REQUEST)) is not None:
            source = got[0]
            self._record(source, _COUNTS.unpack(got[1]))  # fresh: the chunk's size depends on it
            rows = self._hand_out(source)
            if rows is WAIT:
                self.mailbox.send(source, TAG_WORK, _WAIT_MESSAGE)
            else:
                self.mailbox.send(source, TAG_WORK, pack_rows(rows or RequestRows.empty()))

    # -- progress --------------------------------------------------------------------------
    def _record(self, rank: int, progress: tuple) -> None:
        self.counts[rank] = progress[:2]
        self.latency[rank] = progress[2]

    def _collect(self) -> None:
        while (got := self.mailbox.poll(TAG_PROGRESS)) is not None:
            self._received[got[0], 0] += 1
            self._record(got[0], _COUNTS.unpack(got[1]))
        while (got := self.mailbox.poll(TAG_DONE)) is not None:
            source, *counts = got[0], *_DONE.unpack(got[1])
            self._record(source, counts[:3])
            self._sent[source] = counts[3:]
            self.done[source] = True

    async def report(self, finished: Callable[[], tuple[int, int]], until: asyncio.Future,
                     stop: asyncio.Event | None = None, reason: Callable[[], str] = lambda: "stopped") -> None:
        """Non-root: send progress every second until ``until`` is done, then ``DONE``; pass
        this rank's ``stop`` to rank 0, and rank 0's to :attr:`on_stop`."""
        while True:
            self._pass_stop(stop, reason())  # also when the stop just ended this rank's work
            self._stop_received(source=0)
            if until.done():
                break
            self.mailbox.send(0, TAG_PROGRESS, _COUNTS.pack(*finished()))
            self._progress_sent += 1
            await asyncio.wait([until], timeout=PROGRESS_EVERY_S)
        self.mailbox.send(0, TAG_DONE, _DONE.pack(*finished(), self._progress_sent, self._stops_sent))
        self.mailbox.flush()

    async def close(self) -> None:
        """Every rank, after :meth:`serve` or :meth:`report`: receive what is still on its way,
        so that no message outlives the run (``MPI_Finalize`` fails on a communicator holding
        unmatched messages). A rank's ``DONE`` says how many ``PROGRESS`` and ``STOP`` it sent,
        and rank 0 receives (and drops: the ``DONE`` carried newer counts) those it has not had
        yet — waiting for them, since MPI orders messages of one tag, not across tags. Rank 0 may
        have told a rank to stop that had already left its loop: it says which (one ``Ibcast``),
        and each such rank takes its ``STOP``."""
        if self.rank == 0:
            for source, (progress, stops) in enumerate((self._sent - self._received).tolist()):
                for tag, missing in ((TAG_PROGRESS, progress), (TAG_STOP, stops)):
                    for _ in range(missing):
                        self.mailbox.receive(source, tag)
        told = np.zeros(self.size, dtype=np.uint8)
        told[self._stop_sent_to] = 1
        await self.mailbox.bcast(told)
        if self.rank and told[self.rank] and not self._stop_from_root:
            self.mailbox.receive(0, TAG_STOP)
            self._stop_from_root = True

    async def serve(self, finished: Callable[[], tuple[int, int]], own_work: asyncio.Future, stop: asyncio.Event,
                    on_tick: Callable[[np.ndarray], None] | None = None,
                    reason: Callable[[], str] = lambda: "stopped") -> None:
        """Root: hand out chunks and gather progress until every rank (itself included) is done.
        Once ``stop`` is set (here, or by a rank's ``STOP``), requests are answered with no more
        work and every rank not done is told to stop."""
        tick = time.monotonic()
        while True:
            self._stop_received()
            self._pass_stop(stop, reason())
            if self.pool is not None:
                if stop.is_set():
                    self.pool.open = False
                self._serve_requests()
            self._collect()
            self._record(0, finished())
            self.done[0] = own_work.done()
            if self.done.all():
                break
            now = time.monotonic()
            if on_tick is not None and now - tick >= 0.25:
                on_tick(self.counts)
                tick = now
            if self.size == 1:  # nobody to serve: just follow its own work
                await asyncio.wait([own_work], timeout=0.25)
            else:
                await asyncio.sleep(ROOT_POLL_S)
        self.mailbox.flush()
