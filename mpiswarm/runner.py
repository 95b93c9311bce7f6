"""One ``mpiswarm run`` on every rank: input → scatter → client → gather → store.

Each phase is a function of its own; :func:`run` strings them together and returns the
exit code, the same on every rank. Finished rows are checkpointed as they come (see
:mod:`mpiswarm.checkpoint`), so a job killed at any moment resumes when run again.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import signal
import sys
import threading
import time
from contextlib import AsyncExitStack, ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _mpi
from .checkpoint import Manifest, ShardWriter, fingerprint, load_finished, open_run_dir, remove_run_dir, shard_path
from .client import EndpointClient, EndpointUnavailable, card_max_model_len, model_problem
from .config import DEFAULT_ENDPOINT, LAYOUTS, PARTS_PER, RunConfig, check_output  # noqa: F401 (re-exported)
from .balance import Chunk, initial_share
from .budget import TokenBudget
from .control import Control, RowPool, WorkSource
from .dispatch import UNANSWERED_STOPPED, Dispatcher, EndpointPool
from .errors import ErrorKind
from .aggregate import VoteCounter
from .ensemble import EnsemblePlan, expand
from .endpoints import check_template, endpoint_from_hostfile, expand_endpoint, parse_hostfile
from .exitcodes import EXIT_ENDPOINT_DOWN, EXIT_OK, EXIT_PROMPTS_FAILED, EXIT_RESUME
from .gather import gather_in_rounds, optional_columns, gather_stats, redistribute_in_rounds
from .packed import PackedColumns, carried, row_bytes
from .inputs import InputError, PromptSet, check_row_sampling
from .lock import OutputLock
from .metrics import engine_deltas
from .partition import contiguous_bounds
from .records import RankStats, ResultColumns
from .reduce import Combiner, Items, reduce_tree
from .rows import RequestRows
from .scatter import scatter_rows
from .store import (WriteGuard, create_part_file, create_result_file, create_virtual_file, estimate_file_bytes,
                    part_name, parts_dir, remove_parts, remove_stale_parts)
from .codec import utf8_lengths
from .progress import ProgressPrinter
from .read import read_prompts_parallel
from .summary import Tally, format_reduction, format_summary, format_votes

#: rows rank 0 gathers and writes at a time (bounded memory for jobs of millions of rows)
GATHER_ROWS_PER_ROUND = 1 << 18
#: the virtual layout's rounds: rank 0 encodes at most this many rows of prompts and custom_ids
#: at a time for all ranks together (each rank still gets at most GATHER_ROWS_PER_ROUND rows a
#: round); rounds are per-destination work, so at 10,000 ranks fewer, larger ones are cheaper
VIRTUAL_TEXT_ROWS_PER_ROUND = 1 << 20
def _say(config: RunConfig, message: str) -> None:
    if not config.report.quiet:
        print(message, flush=True)


class WriteFailed(Exception):
    """The output (or a part of it) could not be written: one line naming the path and why.
    Every rank raises it, after the collectives; the checkpoints stay for the next attempt."""


@dataclass
class Plan:
    """What the root decided before anything is sent, shared with every rank."""

    entries: list | None  # hostfile entries, or None
    n: int  # completions per row (the widest of --n and any row's own n)
    run_dir: str
    attempt: int
    n_rows: int
    n_finished: int  # rows finished by earlier attempts


def _prepare_on_root(config: RunConfig, comm, held: ExitStack | None = None) -> tuple[
        Plan, PromptSet | None, ResultColumns | None, EnsemblePlan | None]:
    """Every rank reads a part of the input (:func:`~mpiswarm.read.read_prompts_parallel`), the
    root takes the output's lock (held in ``held`` until the job ends: a second job on the same
    output is refused before it reads or sends anything), validates the rest and opens the run
    directory; every rank learns the plan. Returns
    ``(plan, prompt_set, finished, ensemble)``, the last three on the root only (``ensemble``
    None unless ``repeat``). Raises :class:`InputError` on every rank when the
    input is bad.
    """
    plan = prompt_set = finished = ensemble = None
    error = entries = None
    root = _mpi.rank_and_size(comm)[0] == _mpi.ROOT
    if root:
        try:
            entries = parse_hostfile(config.endpoints.hostfile) if config.endpoints.hostfile else None
            if not config.endpoints.hostfile:
                check_template(config.endpoints.endpoint)
            check_output(config)
            if held is not None:
                lock = held.enter_context(OutputLock(config.output.path))
                if lock.took_over:
                    print(f"mpiswarm: {lock.took_over}", file=sys.stderr, flush=True)
        except InputError as exc:
            error = str(exc)
    error = _mpi.bcast(error, comm)
    if error:
        raise InputError(error)
    # every rank reads a part of the input (rank 0 alone for a small file); raises on every rank
    prompt_set = read_prompts_parallel(config.input, comm, template=config.prompts.template,
                                       prompt_format=config.prompts.prompt_format)
    if root:
        try:
            check_row_sampling(prompt_set, config.prompts.sampling)  # each row as sent, as vLLM would take it
            if config.schedule.repeat:
                prompt_set, ensemble = expand(prompt_set, _mpi.rank_and_size(comm)[1], config.schedule.repeat,
                                              config.prompts.sampling.get("seed") or 0)
            n = max([config.prompts.sampling.get("n", 1)] + [json.loads(k).get("n", 1) for k in set(prompt_set.overrides) if k])
            options = config.answer_options()
            manifest = Manifest(input=os.path.abspath(config.input), input_sha256=prompt_set.sha256,
                                n_rows=len(prompt_set), n=n, fingerprint=fingerprint(options), options=options)
            run_dir, manifest, resumed = open_run_dir(config.output.path, manifest, config.output.restart)
            finished = load_finished(run_dir, n) if resumed else ResultColumns.pending(np.zeros(0, np.int64), n, 0)
            plan = Plan(entries, n, run_dir, manifest.attempt, len(prompt_set), len(finished))
        except InputError as exc:
            error = str(exc)
    error, plan = _mpi.bcast((error, plan), comm)
    if error:
        raise InputError(error)
    return plan, prompt_set, finished, ensemble


def _endpoint_url(config: RunConfig, entries, comm) -> str:
    rank, _ = _mpi.rank_and_size(comm)
    if entries:
        return endpoint_from_hostfile(entries, rank)
    return expand_endpoint(
        config.endpoints.endpoint, rank=rank, local_rank=_mpi.local_rank(comm), host=_mpi.hostname(), base_port=config.endpoints.base_port
    )


async def _check_endpoint(url: str, config: RunConfig) -> tuple[str | None, int, dict | None]:
    """(why the endpoint is unusable or None, its max_model_len, its /metrics before the run).
    Unusable: not healthy before the deadline, or healthy but not serving ``--model`` (a vLLM
    endpoint would answer every call 404: fail now, not after the run)."""
    async with EndpointClient(url, config.client) as client:
        try:
            await client.wait_healthy(config.endpoints.health_timeout)
        except EndpointUnavailable as exc:
            return str(exc), -1, None
        cards = await client.model_cards()
        why = model_problem(cards, config.client.model)
        if why:
            return why, -1, None
        return None, card_max_model_len(cards or [], config.client.model), await client.metrics()


async def _read_metrics(url: str, config: RunConfig) -> dict | None:
    async with EndpointClient(url, config.client) as client:
        return await client.metrics()


class StopRequest:
    """SIGTERM/SIGINT (PBS at walltime, Ctrl-C) and ``--time-limit`` ask the run to stop
    sending: calls in flight are abandoned, answered rows are written, the job exits
    :data:`EXIT_RESUME`. Works outside and inside the event loop."""

    def __init__(self, deadline: float | None):
        self.deadline = deadline  # time.monotonic() value, or None
        self.reason: str | None = None
        self._event: asyncio.Event | None = None
        self._loop = None
        self._lock = threading.Lock()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.request(f"{signal.Signals(signum).name} received")

    def request(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._event.set)

    def event(self) -> asyncio.Event:
        """An event of the running loop that is set on a stop request (or at the deadline)."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            if self.reason is not None:
                self._event.set()
        if self.deadline is not None:
            delay = self.deadline - time.monotonic()
            self._loop.call_later(max(0.0, delay), self.request, "--time-limit reached")
        return self._event

    def detach(self) -> None:
        with self._lock:
            self._loop = self._event = None


async def _serve(urls: list[str], config: RunConfig, piece: RequestRows, plan: Plan, stats: RankStats,
                 shard: ShardWriter, stop: StopRequest, pool: RowPool | None, printer: ProgressPrinter | None,
                 comm, down_at_start: dict, budget: TokenBudget | None = None) -> tuple[list[Chunk], dict]:
    """Send this rank's calls (and, on the root, serve the control plane).
    Returns the chunks this rank held, with their results, and the endpoints declared dead."""
    rank, size = _mpi.rank_and_size(comm)
    control = Control(_mpi.Mailbox(comm), rank, size, plan.n)
    control.pool = pool
    concurrency = config.client.calls_in_flight()
    dynamic = config.balances(size)
    cap = config.call_rows() if dynamic else None
    # chat: one prompt a call, so the calls in flight are prompts in flight
    batch_size = 1 if config.client.api == "chat" else config.client.batch_size
    source = WorkSource(batch_size=batch_size, concurrency=concurrency, cap=cap,
                        fetch=control.fetch if dynamic else None, low_water=cap or 0,
                        prepare=budget.apply if budget else None, limit=config.client.max_prompts_per_call)
    source.add(Chunk.of(piece, plan.n, rank))
    event = stop.event()
    async with AsyncExitStack() as stack:
        endpoints = EndpointPool(urls, config.client, stack)
        for url, why in down_at_start.items():  # they join once healthy (revive_interval)
            endpoints.declare_dead(url, why)
        dispatcher = Dispatcher(endpoints, stats, policy=config.schedule.retry, on_finished=shard.append, budget=budget,
                                revive_interval=config.endpoints.revive_interval or None)
        control.progress = dispatcher.progress
        control.on_stop = stop.request  # another rank's SIGTERM or --time-limit stops this one too

        def why() -> str:
            return stop.reason or "stopped"

        try:
            work = asyncio.ensure_future(dispatcher.run(source, config.prompts.sampling, event))
            if rank == _mpi.ROOT:
                await control.serve(dispatcher.progress, work, event, printer.update if printer else None, why)
                if printer:
                    printer.close(control.counts)
            else:
                await control.report(dispatcher.progress, work, event, why)
            await work  # its exception, if any, reaches the abort guard
        finally:
            stop.detach()
        for name, value in endpoints.own_endpoint_record().items():
            setattr(stats, name, value)
        stats.extra["endpoint_events"] = endpoints.events
    if pool is not None and len(leftover := pool.leftover()):  # never handed out: left for a resume
        chunk = control.chunk(RequestRows(leftover, [""] * len(leftover), [""] * len(leftover)))
        chunk.results.fail(range(len(leftover)), UNANSWERED_STOPPED, final=False, kind=ErrorKind.NOT_ATTEMPTED)
        source.chunks.append(chunk)
    return source.chunks, endpoints.dead


def _count_votes(votes: VoteCounter | None, ensemble: EnsemblePlan | None, part: ResultColumns) -> None:
    """Add a block of an ensemble's rows (every choice a vote) to the votes per prompt."""
    if votes is not None and len(part):
        sources = np.repeat(ensemble.source_of(part.index), part.n)
        votes.add(sources.tolist(), part.completion, np.repeat(part.ok, part.n).tolist())


def _token_budget(config: RunConfig, reports: list, max_model_len: int, plan: Plan, comm) -> TokenBudget | None:
    """``--max-tokens auto``: the budget for the smallest ``max_model_len`` the healthy
    endpoints advertise (the same on every rank, whichever endpoint a row ends up on); None
    otherwise. An endpoint that does not advertise one is an input error on every rank:
    nothing has been sent."""
    if not config.prompts.max_tokens_auto:
        return None
    lengths = _mpi.allgather(max_model_len, comm)
    known = [(length, url) for length, (_, _, url, why) in zip(lengths, reports) if not why]
    unknown = [url for length, url in known if length < 1]
    if unknown:
        if _mpi.rank_and_size(comm)[0] == _mpi.ROOT and plan.attempt == 0:
            remove_run_dir(plan.run_dir)
        raise InputError(f"--max-tokens auto: endpoint {unknown[0]} does not advertise max_model_len on "
                         "/v1/models; give --max-tokens a number instead")
    return TokenBudget(min(length for length, _ in known), config.prompts.max_tokens_cap)


def _held_rows(finished: ResultColumns | None, results: ResultColumns, root: bool) -> ResultColumns:
    """Every row this rank holds: the root's include the rows of earlier attempts."""
    return ResultColumns.concat([finished, results]) if root and len(finished) else results


def _gather_and_write(out, prompt_set: PromptSet | None, finished: ResultColumns | None, results: ResultColumns,
                      tally: Tally, votes: VoteCounter | None, ensemble: EnsemblePlan | None, comm,
                      guard: WriteGuard | None = None) -> float:
    """The single layout: every rank's rows to rank 0 in rounds, rank 0 writing each round (and
    the rows of earlier attempts) as it comes, through ``guard`` (given on the root): a write
    that fails stops the writing, not the rounds. Returns rank 0's seconds spent writing."""
    root = guard is not None
    write = out.write_rows if out is not None else None  # None: the file could not be begun
    write_s = 0.0
    for part in [PackedColumns.from_results(finished)] if root and len(finished) else []:
        guard.run(write, prompt_set.prompts, prompt_set.custom_ids, part)
        tally.add(part)
        _count_votes(votes, ensemble, part)
    for part in gather_in_rounds(results, GATHER_ROWS_PER_ROUND, comm):
        w0 = time.perf_counter()
        if root:
            guard.run(write, prompt_set.prompts, prompt_set.custom_ids, part)
        write_s += time.perf_counter() - w0
        tally.add(part)
        _count_votes(votes, ensemble, part)
    return write_s


def file_bytes(held: ResultColumns, bounds: np.ndarray, texts: list[list[str]] | None, comm=None) -> int:
    """About how many bytes the result file this rank writes will take: the file of rows
    ``bounds[rank]:bounds[rank + 1]`` (0 for a rank that writes none), from the rows every rank
    ``held`` and the root's text columns ``texts`` (prompts and custom_ids, None elsewhere). For
    :meth:`~mpiswarm.store.WriteGuard.reserve`: a file that cannot fit is refused before it is begun."""
    rank, size = _mpi.rank_and_size(comm)
    bounds = np.asarray(bounds, dtype=np.int64)
    block = np.searchsorted(bounds, held.index, side="right") - 1
    sizes = np.bincount(block, weights=row_bytes(held, carried(held)), minlength=size)[:size]
    answers = _mpi.allreduce_sum_array(sizes.astype(np.int64), comm)
    per_block = None
    if texts is not None:
        lengths = sum((utf8_lengths(column) for column in texts), np.zeros(int(bounds[-1]), np.int64))
        edges = np.concatenate([[0], np.cumsum(lengths)])
        per_block = [int(edges[b] - edges[a]) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())]
    mine = _mpi.scatter(per_block, comm)
    rows = int(bounds[rank + 1] - bounds[rank])
    if not rows:
        return 0
    n = held.n
    return estimate_file_bytes(mine + int(answers[rank]), rows * (3 + 3 * n))


def part_bounds(n_rows: int, writers: list[bool]) -> np.ndarray:
    """Rows ``bounds[r]:bounds[r + 1]`` for rank r: contiguous blocks of even size for the ranks
    that write a part (``writers[r]``), none for the others."""
    sizes = np.zeros(len(writers), dtype=np.int64)
    sizes[np.flatnonzero(writers)] = np.diff(contiguous_bounds(n_rows, max(1, sum(writers))))
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def write_parts(output: str, n_rows: int, n: int, local: ResultColumns, prompts: list[str] | None,
                custom_ids: list[str] | None, comm=None, parts_per: str = "rank",
                visit: Callable[[PackedColumns], None] | None = None) -> tuple[Tally | None, float, list, bool]:
    """The virtual layout's collective write: every writing rank (every rank, or with
    ``parts_per="node"`` each node's first rank) writes a contiguous block of the input's rows
    to its own part file in ``OUTPUT.parts/`` — its block's results from whichever ranks hold
    them (``local``), the ``prompts`` and ``custom_ids`` from the root (None elsewhere) — in
    rounds; ``visit`` sees every block of rows it writes. A part that cannot be written (disk
    full, quota) raises :class:`WriteFailed` on every rank once the rounds are over, this run's
    parts removed. Returns, on the root, every rank's
    :class:`Tally` added up (None elsewhere); this
    rank's seconds writing; every part as ``(path relative to the output's directory, first
    row, rows)``; the optional columns the parts have. Every part file is in place when it
    returns; the root then writes the output over them (:func:`~mpiswarm.store.create_virtual_file`)."""
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    token = _mpi.bcast(secrets.token_hex(4) if root else None, comm)
    directory = parts_dir(output)
    if root:
        os.makedirs(directory, exist_ok=True)
    _mpi.barrier_sleeping(comm)
    optional = optional_columns(local, comm)
    writes = parts_per == "rank" or _mpi.local_rank(comm) == 0
    bounds = part_bounds(n_rows, _mpi.allgather(writes, comm))
    first, count = int(bounds[rank]), int(bounds[rank + 1] - bounds[rank])
    texts = (lambda a, b: [prompts[a:b], custom_ids[a:b]]) if root else None  # noqa: E731
    tally, write_s = Tally(), 0.0
    path = os.path.join(directory, part_name(token, rank))
    guard = WriteGuard(path)  # a write that fails (disk full, quota) leaves the rounds going
    guard.reserve(file_bytes(local, bounds, texts(0, n_rows) if root else None, comm))
    try:
        with ExitStack() as writing:
            part = guard.enter(writing, create_part_file(path, first, count, n, optional)) if count else None
            for block in redistribute_in_rounds(local, bounds, GATHER_ROWS_PER_ROUND, texts, 2, comm,
                                                text_rows_per_round=VIRTUAL_TEXT_ROWS_PER_ROUND):
                if part is None:  # no rows of its own (more ranks than rows, or not its node's writer)
                    continue
                w0 = time.perf_counter()
                guard.run(part.write_rows, block.texts[0], block.texts[1], block.rows, base=block.start)
                write_s += time.perf_counter() - w0
                tally.add(block.rows)
                if visit is not None:
                    visit(block.rows)
            guard.check()  # a failed part is removed, never renamed into place
    except OSError as exc:  # also: closing or renaming the part
        guard.error = guard.error or exc
    tallies = _mpi.gather(tally, comm)
    failures = [m for m in _mpi.allgather(guard.message, comm) if m]
    _mpi.barrier_sleeping(comm)  # every part renamed into place before the output points to them
    name = os.path.basename(directory)
    parts = [(os.path.join(name, part_name(token, r)), int(bounds[r]), int(bounds[r + 1] - bounds[r]))
             for r in range(size)]
    if failures:
        if root:  # this run's parts that were written point nowhere: remove them (earlier runs' stay)
            remove_parts(output, parts)
        raise WriteFailed(failures[0])
    return (Tally.merge(tallies) if root else None), write_s, parts, optional


def _write_failed(message: str, config: RunConfig, plan: Plan, parts: list, root: bool, comm) -> int:
    """The output could not be written: one line naming the path and why, this run's parts
    removed (the output, if any, is an earlier run's and keeps its own), the checkpoints kept so
    that the same command writes the file once there is room; exit :data:`EXIT_RESUME`."""
    if root:
        remove_parts(config.output.path, parts)
        print(f"mpiswarm: {message}; every answered row is kept in {plan.run_dir}: run the same command again "
              "to write the file", file=sys.stderr, flush=True)
    return _mpi.bcast(EXIT_RESUME if root else None, comm)


def _ring(urls: list[str], rank: int) -> list[str]:
    """Every rank's endpoint, starting with this rank's own: its failover order."""
    return urls[rank:] + urls[:rank]


def run(config: RunConfig, comm=None) -> int:
    """Run the whole job on this rank; returns the exit code (identical on every rank).

    Raises :class:`~mpiswarm.inputs.InputError` (on every rank) for bad input, or when another
    job holds the output's lock (:class:`~mpiswarm.lock.OutputLocked`), before anything is sent.
    """
    with ExitStack() as held:  # the root's output lock, released however the run ends
        return _run(config, comm, held)


def _run(config: RunConfig, comm, held: ExitStack) -> int:
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    times: dict[str, float] = {}
    t_start = t = _mpi.wtime()
    stop = StopRequest(None if config.schedule.time_limit is None else time.monotonic() + config.schedule.time_limit)
    stop.install()

    def phase(name: str) -> None:
        nonlocal t
        now = _mpi.wtime()
        times[name] = now - t
        t = now

    plan, prompt_set, finished, ensemble = _prepare_on_root(config, comm, held)
    phase("read")

    url = _endpoint_url(config, plan.entries, comm)
    stats = RankStats(rank=rank, host=_mpi.hostname(), endpoint=url)
    why, stats.max_model_len, metrics_before = asyncio.run(_check_endpoint(url, config))
    reports = _mpi.allgather((rank, stats.host, url, why), comm)
    problems = [p for p in reports if p[3]]
    healthy = len({p[2] for p in reports if not p[3]})
    needed = len({p[2] for p in reports}) if config.endpoints.min_endpoints is None else config.endpoints.min_endpoints
    if root:
        for r, host, u, reason in problems:
            print(f"mpiswarm: rank {r} on {host}: endpoint {u} unavailable: {reason}", flush=True)
    if healthy < needed:
        if root and plan.attempt == 0:  # nothing was sent: leave nothing behind
            remove_run_dir(plan.run_dir)
        return EXIT_ENDPOINT_DOWN
    down_at_start = {p[2]: f"not healthy at the start: {p[3]}" for p in problems}
    budget = _token_budget(config, reports, stats.max_model_len, plan, comm)  # --max-tokens auto
    phase("health")
    stats.t_health = times["health"]

    todo = initial = pool = counts = None
    if root:
        todo = np.arange(plan.n_rows, dtype=np.int64)
        if plan.n_finished:
            todo = np.setdiff1d(todo, finished.index, assume_unique=True)
        initial = todo
        if config.balances(size):  # a first share now, the rest on request
            concurrency = config.client.calls_in_flight()
            limit = config.call_rows() * (concurrency + 1)  # the calls in flight and one more queued
            per_rank = initial_share(len(todo), size, limit)
            initial = todo[: per_rank * size]
            pool = RowPool(prompt_set, todo[len(initial):], size, minimum=concurrency, limit=limit,
                        handed=np.diff(contiguous_bounds(len(initial), size)))
        elif ensemble is not None:  # each rank its own rows
            initial, counts = ensemble.rank_order(todo)
    piece = scatter_rows(prompt_set, initial, comm=comm, counts=counts)
    phase("scatter")
    stats.t_scatter = times["scatter"]

    printer = None
    if root and not config.report.quiet and config.report.progress != "none":
        printer = ProgressPrinter(plan.n_rows, plan.n_finished, mode=config.report.progress,
                                  interval=config.report.progress_interval)
    shard = ShardWriter(shard_path(plan.run_dir, rank, plan.attempt))
    t0 = time.perf_counter()
    urls = _ring([p[2] for p in reports], rank)
    try:
        chunks, dead = asyncio.run(_serve(urls, config, piece, plan, stats,
                                          shard, stop, pool, printer, comm, down_at_start, budget))
    finally:
        shard.close()
    results = ResultColumns.concat([c.results for c in chunks])
    stats.t_requests = time.perf_counter() - t0
    stats.n_prompts = int(results.done.sum())
    stats.n_ok = int(results.ok.sum())
    stats.extra["dead_endpoints"] = dead
    # A stopped job (SIGTERM at the walltime: PBS kills it a few seconds later) does not wait on
    # its endpoint's /metrics: a server being stopped beside it may hold the connection open.
    if metrics_before is not None and stop.reason is None:
        for name, value in engine_deltas(metrics_before, asyncio.run(_read_metrics(url, config))).items():
            setattr(stats, name, value)
    _mpi.barrier_sleeping(comm)  # the slowest rank sets the end of the request phase; the others sleep
    phase("requests")

    # Gather and write in rounds: no rank holds more than GATHER_ROWS_PER_ROUND new rows at once.
    # A write that fails (disk full, quota) is kept by a WriteGuard while the rounds go on, then
    # every rank learns it and the run ends resumable: no temporary file left, checkpoints kept.
    t0 = time.perf_counter()
    votes = VoteCounter(ensemble.n_prompts) if ensemble is not None else None
    guard = WriteGuard(config.output.path) if root else None
    if config.output.layout == "single":  # room for the whole file, or refused before it is begun
        need = file_bytes(_held_rows(finished, results, root), [0] + [plan.n_rows] * size,
                          [prompt_set.prompts, prompt_set.custom_ids] if root else None, comm)
        if root:
            guard.reserve(need)
    parts: list = []
    try:
        if config.output.layout == "virtual":  # every rank writes its own block; rank 0 maps them
            plan_here = _mpi.bcast(ensemble, comm) if config.schedule.repeat else None  # each writer counts its rows' votes
            counted = VoteCounter(plan_here.n_prompts) if plan_here is not None else None
            tally, write_s, parts, optional = write_parts(
                config.output.path, plan.n_rows, plan.n, _held_rows(finished, results, root),
                *((prompt_set.prompts, prompt_set.custom_ids) if root else (None, None)), comm,
                parts_per=config.output.parts_per,
                visit=None if counted is None else (lambda part: _count_votes(counted, plan_here, part)))
            if counted is not None:
                every = _mpi.gather(counted, comm)  # in rank order: rows in input order
                if root:
                    for other in every:
                        votes.merge(other)
            opened = create_virtual_file(config.output.path, plan.n_rows, plan.n, parts, optional) if root else None
        else:
            tally, write_s = Tally(), 0.0
            opened = create_result_file(config.output.path, plan.n_rows, plan.n) if root else None
        with ExitStack() as writing:
            out = guard.enter(writing, opened) if root else None
            if config.output.layout == "virtual":
                if out is not None:
                    out.n_ok = tally.ok
            else:
                write_s = _gather_and_write(out, prompt_set, finished, results, tally, votes, ensemble, comm, guard)
            failed = _mpi.bcast(guard.message if root else None, comm)
            if failed:
                if root:
                    guard.check()  # raised inside the file's context: its temporary file is removed
                raise WriteFailed(failed)
            if votes is not None:
                out.write_ensemble(ensemble, votes.votes())
            stats.t_gather = time.perf_counter() - t0 - write_s
            reduction, reduce_s = None, 0.0
            if config.reduce is not None and _mpi.bcast(root and tally.open == 0 and tally.rows == plan.n_rows, comm):
                r0 = time.perf_counter()
                combiner = Combiner(urls, config, stats, dead, stop)
                mine = Items.from_results(_held_rows(finished, results, root))
                reduction = reduce_tree(mine, plan.n_rows * plan.n, combiner, comm)
                reduce_s = time.perf_counter() - r0
                if root:
                    out.write_reduce(reduction)
            stats.cpu_s = time.process_time()
            stats.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            all_stats = gather_stats(stats, comm)
            stop_reasons = _mpi.gather(stop.reason, comm)
            code = None
            if root:  # from here on the root alone: a failure below reaches no other rank
                complete = tally.open == 0 and tally.rows == plan.n_rows and (reduction is None or reduction.complete)
                out.write_ranks(all_stats)
                phase("gather")
                times["write"] = write_s
                times["gather"] -= write_s + reduce_s
                if reduction is not None:
                    times["reduce"] = reduce_s
                times["total"] = _mpi.wtime() - t_start
                out.set_attrs({
                    "model": config.client.model,
                    "n_ranks": size,
                    "complete": complete,
                    "attempt": plan.attempt,
                    "n_resumed": plan.n_finished,
                    "params": config.params(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **{f"time_{k}_s": v for k, v in times.items()},
                })
    except WriteFailed as exc:  # every rank
        return _write_failed(str(exc), config, plan, parts, root, comm)
    except OSError as exc:  # the root alone: its file's metadata, closing or renaming it
        if not root:
            raise
        guard.error = guard.error or exc
        return _write_failed(guard.message, config, plan, parts, root, comm)
    if root:
        remove_stale_parts(config.output.path, keep=[p for p, _, k in parts if k])  # earlier runs' parts
        if complete:
            remove_run_dir(plan.run_dir)
            all_ok = tally.ok == tally.rows and (reduction is None or reduction.final_ok)
            code = EXIT_OK if all_ok else EXIT_PROMPTS_FAILED
        else:
            code = EXIT_RESUME
        why = next((r for r in stop_reasons if r), None)
        _say(config, format_summary(tally, all_stats, times, os.path.abspath(config.output.path),
                                    resumed=plan.n_finished, stopped=why))
        if votes is not None:
            _say(config, format_votes(votes.votes(), ensemble))
        if reduction is not None:
            _say(config, format_reduction(reduction))
    return _mpi.bcast(code, comm)
