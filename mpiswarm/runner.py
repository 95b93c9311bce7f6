"""One ``mpiswarm run`` on every rank: input → scatter → client → gather → store.

:func:`_run` is the run as a short sequence of phases over one :class:`Job` — read, health,
scatter, requests, write (gather or the virtual layout's parts, a tree reduction) — each a
function of its own; it returns the exit code, the same on every rank. Finished rows are checkpointed as they come (see
:mod:`mpiswarm.checkpoint`), so a job killed at any moment resumes when run again.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import sys
import time
from collections import Counter
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from . import _mpi
from .balance import Chunk, initial_share
from .budget import TokenBudget
from .checkpoint import Manifest, ShardWriter, fingerprint, load_finished, open_run_dir, remove_run_dir, shard_path
from .client import EndpointClient, EndpointUnavailable, card_max_model_len, model_problem
from .config import RunConfig, check_output
from .control import Control, RowPool, WorkSource
from .dispatch import UNANSWERED_STOPPED, Dispatcher, EndpointPool
from .endpoints import check_template, endpoint_from_hostfile, expand_endpoint, parse_hostfile
from .ensemble import EnsemblePlan, expand
from .errors import ErrorKind
from .exitcodes import EXIT_ENDPOINT_DOWN, EXIT_OK, EXIT_PROMPTS_FAILED, EXIT_RESUME
from .gather import gather_stats
from .chat import is_chat
from .inputs import InputError, PromptSet, check_row_sampling, row_model, row_models
from .layout import Layout, WriteFailed, layout_for
from .lock import OutputLock
from .metrics import engine_deltas
from .partition import contiguous_bounds
from .progress import ProgressPrinter
from .read import read_prompts_parallel
from .records import RankStats, ResultColumns
from .reduce import Combiner, Items, reduce_tree
from .rows import RequestRows
from .scatter import scatter_rows
from .stop import StopRequest
from .store import WriteGuard, remove_parts, remove_stale_parts
from .summary import format_reduction, format_summary, format_votes


def _say(config: RunConfig, message: str) -> None:
    if not config.report.quiet:
        print(message, flush=True)


@dataclass
class Plan:
    """What the root decided before anything is sent, shared with every rank."""

    entries: list | None  # hostfile entries, or None
    n: int  # completions per row (the widest of --n and any row's own n)
    run_dir: str
    attempt: int
    n_rows: int
    n_finished: int  # rows finished by earlier attempts
    models: list = field(default_factory=list)  # the models rows name of their own (over --model)
    has_chat: bool = False  # some row is a chat row (or --api chat): the batch chat route is looked for


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
            # each row as sent, on its route, as vLLM would take it
            check_row_sampling(prompt_set, config.prompts.sampling, config.client.api)
            if prompt_set.unused:  # a misspelt option would go nowhere: said once, before anything is sent
                print(f"mpiswarm: warning: {config.input}: keys that are neither vLLM request options nor fields "
                      "the --template uses are not sent: " + ", ".join(
                          f"'{k}' ({n:,} rows)" for k, n in sorted(prompt_set.unused.items())), file=sys.stderr,
                      flush=True)
            if config.schedule.repeat:
                prompt_set, ensemble = expand(prompt_set, _mpi.rank_and_size(comm)[1], config.schedule.repeat,
                                              config.prompts.sampling.get("seed") or 0)
            n = max([config.prompts.sampling.get("n", 1)] + [json.loads(k).get("n", 1) for k in set(prompt_set.overrides) if k])
            options = config.answer_options()
            manifest = Manifest(input=os.path.abspath(config.input), input_sha256=prompt_set.sha256,
                                n_rows=len(prompt_set), n=n, fingerprint=fingerprint(options), options=options)
            run_dir, manifest, resumed = open_run_dir(config.output.path, manifest, config.output.restart)
            finished = load_finished(run_dir, n) if resumed else ResultColumns.pending(np.zeros(0, np.int64), n, 0)
            plan = Plan(entries, n, run_dir, manifest.attempt, len(prompt_set), len(finished),
                        row_models(prompt_set.overrides),
                        config.client.api == "chat" or any(map(is_chat, dict.fromkeys(prompt_set.overrides))))
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


class HealthReport(NamedTuple):
    """What one rank's health check found, allgathered so every rank knows every endpoint."""

    rank: int
    host: str
    url: str
    why: str | None  # why the endpoint is unusable; None: healthy, serving the model
    chat_batch: bool  # serves /v1/chat/completions/batch (looked for only when needed)
    stopped: bool = False  # a stop (signal, --time-limit) came before the check ended


async def _check_endpoint(url: str, config: RunConfig, models: list,
                          chat: bool = False) -> tuple[str | None, int, dict | None, bool]:
    """(why the endpoint is unusable or None, its max_model_len, its /metrics before the run,
    whether it serves /v1/chat/completions/batch). Unusable: not healthy before the deadline,
    or healthy but not serving ``--model`` (a vLLM endpoint would answer every call 404: fail
    now, not after the run)."""
    async with EndpointClient(url, config.client) as client:
        try:
            await client.wait_healthy(config.endpoints.health_timeout)
        except EndpointUnavailable as exc:
            return str(exc), -1, None, False
        cards = await client.model_cards()
        for model in dict.fromkeys([config.client.model, *models]):  # --model, and every row's own
            why = model_problem(cards, model, "--model" if model == config.client.model else "the rows' model")
            if why:
                return why, -1, None, False
        batch = chat and config.client.chat_route == "auto" and await client.has_chat_batch()
        return None, card_max_model_len(cards or [], config.client.model), await client.metrics(), batch


async def _check_endpoint_or_stop(stop: StopRequest, *check_args) -> tuple | None:
    """:func:`_check_endpoint`, cut short by a stop: None when the stop came first. Servers
    can take minutes to load (``--health-timeout``), and a SIGTERM at the walltime or a Ctrl-C
    in that wait must end the job now, not once the wait is over."""
    stopped = stop.event()
    checking = asyncio.ensure_future(_check_endpoint(*check_args))
    waiting = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait([checking, waiting], return_when=asyncio.FIRST_COMPLETED)
        if checking.done():
            return checking.result()
        checking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checking
        return None
    finally:
        waiting.cancel()
        stop.detach()


async def _read_metrics(url: str, config: RunConfig) -> dict | None:
    async with EndpointClient(url, config.client) as client:
        return await client.metrics()


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
    batch_size = 1 if config.client.one_call_a_row() else config.client.batch_size
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
            await control.close()
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


def _token_budget(config: RunConfig, reports: list, max_model_len: int, plan: Plan, comm) -> TokenBudget | None:
    """``--max-tokens auto``: the budget for the smallest ``max_model_len`` the healthy
    endpoints advertise (the same on every rank, whichever endpoint a row ends up on); None
    otherwise. An endpoint that does not advertise one is an input error on every rank:
    nothing has been sent."""
    if not config.prompts.max_tokens_auto:
        return None
    lengths = _mpi.allgather(max_model_len, comm)
    known = [(length, report.url) for length, report in zip(lengths, reports) if not report.why]
    unknown = [url for length, url in known if length < 1]
    if unknown:
        _leave_nothing_behind(plan, _mpi.rank_and_size(comm)[0] == _mpi.ROOT)
        raise InputError(f"--max-tokens auto: endpoint {unknown[0]} does not advertise max_model_len on "
                         "/v1/models; give --max-tokens a number instead")
    return TokenBudget(min(length for length, _ in known), config.prompts.max_tokens_cap)


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


@dataclass
class Job:
    """One run on this rank, filled in phase by phase (:func:`_run`): what each phase found
    is what the next one starts from. Fields marked root are None on the other ranks."""

    config: RunConfig
    comm: object
    rank: int
    size: int
    stop: StopRequest
    times: dict = field(default_factory=dict)  # wall-clock seconds a phase
    clock: float = 0.0  # when the current phase began (MPI wall time)
    started: float = 0.0
    # read
    plan: Plan | None = None
    prompt_set: PromptSet | None = None  # root
    finished: ResultColumns | None = None  # root: rows of earlier attempts
    ensemble: EnsemblePlan | None = None  # root
    # health
    url: str = ""
    stats: RankStats | None = None
    reports: list = field(default_factory=list)  # every rank's HealthReport
    metrics_before: dict | None = None
    down_at_start: dict = field(default_factory=dict)
    budget: TokenBudget | None = None
    # scatter
    piece: RequestRows | None = None
    pool: RowPool | None = None  # root, dynamic schedule
    # requests
    urls: list = field(default_factory=list)  # this rank's failover order
    results: ResultColumns | None = None
    dead: dict = field(default_factory=dict)

    @property
    def root(self) -> bool:
        return self.rank == _mpi.ROOT

    def phase(self, name: str) -> float:
        """End phase ``name``: its wall-clock seconds, recorded in :attr:`times`."""
        now = _mpi.wtime()
        self.times[name] = now - self.clock
        self.clock = now
        return self.times[name]


def _run(config: RunConfig, comm, held: ExitStack) -> int:
    rank, size = _mpi.rank_and_size(comm)
    deadline = None if config.schedule.time_limit is None else time.monotonic() + config.schedule.time_limit
    job = Job(config, comm, rank, size, StopRequest(deadline))
    job.stop.install()
    job.started = job.clock = _mpi.wtime()
    _read(job, held)
    code = _check_endpoints(job)
    if code is not None:
        return code
    _scatter(job)
    _send(job)
    return _write(job)


def _read(job: Job, held: ExitStack) -> None:
    """Phase read: the input (every rank a part), the output's lock, the run directory."""
    job.plan, job.prompt_set, job.finished, job.ensemble = _prepare_on_root(job.config, job.comm, held)
    job.phase("read")


def _check_endpoints(job: Job) -> int | None:
    """Phase health: every rank's endpoint healthy and serving the model (or enough of them,
    with --min-endpoints). Returns the exit code when the job cannot go on (nothing sent,
    nothing left behind): too few endpoints, or a stop during the wait; else None."""
    config, comm, plan = job.config, job.comm, job.plan
    job.url = _endpoint_url(config, plan.entries, comm)
    stats = job.stats = RankStats(rank=job.rank, host=_mpi.hostname(), endpoint=job.url)
    checked = asyncio.run(_check_endpoint_or_stop(job.stop, job.url, config, plan.models, plan.has_chat))
    why, stats.max_model_len, job.metrics_before, chat_batch = checked or ("stopped", -1, None, False)
    reports = job.reports = _mpi.allgather(
        HealthReport(job.rank, stats.host, job.url, why, chat_batch, checked is None), comm)
    if any(p.stopped for p in reports):
        return _stopped_before_sending(job)
    # chat rows go in lists where every healthy endpoint serves the batch route (a failed-over
    # call may reach any of them; it was looked for only if some row is chat and --chat-route
    # auto); else one call a conversation
    if any(p.chat_batch for p in reports) and all(p.chat_batch for p in reports if not p.why):
        config = job.config = dataclasses.replace(config, client=dataclasses.replace(config.client, chat_batch=True))
    problems = [p for p in reports if p.why]
    healthy = len({p.url for p in reports if not p.why})
    needed = len({p.url for p in reports}) if config.endpoints.min_endpoints is None else config.endpoints.min_endpoints
    if job.root:
        for p in problems:
            print(f"mpiswarm: rank {p.rank} on {p.host}: endpoint {p.url} unavailable: {p.why}", flush=True)
    if healthy < needed:
        _leave_nothing_behind(plan, job.root)
        return EXIT_ENDPOINT_DOWN
    job.down_at_start = {p.url: f"not healthy at the start: {p.why}" for p in problems}
    job.budget = _token_budget(config, reports, stats.max_model_len, plan, comm)  # --max-tokens auto
    stats.t_health = job.phase("health")
    return None


def _leave_nothing_behind(plan: Plan, root: bool) -> None:
    """Nothing was sent: the root removes the run directory of a first attempt (an earlier
    attempt's checkpoints stay, for the resume)."""
    if root and plan.attempt == 0:
        remove_run_dir(plan.run_dir)


def _stopped_before_sending(job: Job) -> int:
    """A stop came while the endpoints were being checked: nothing was sent, so nothing is
    written; the run directory of a first attempt goes (an earlier attempt's checkpoints stay).
    Exit :data:`EXIT_RESUME`: the same command runs the job."""
    _leave_nothing_behind(job.plan, job.root)
    if job.root:
        why = job.stop.reason or "a stop on another rank"
        print(f"mpiswarm: {why} while checking the endpoints: nothing was sent; run the same command again "
              "to run the job", file=sys.stderr, flush=True)
    return EXIT_RESUME


def _scatter(job: Job) -> None:
    """Phase scatter: each rank its first rows (all of them on the static schedule; on the
    dynamic one a first share, the rest kept by the root's :class:`RowPool`)."""
    config, plan = job.config, job.plan
    initial = counts = None
    if job.root:
        todo = np.arange(plan.n_rows, dtype=np.int64)
        if plan.n_finished:
            todo = np.setdiff1d(todo, job.finished.index, assume_unique=True)
        initial = todo
        if config.balances(job.size):  # a first share now, the rest on request
            concurrency = config.client.calls_in_flight()
            limit = config.call_rows() * (concurrency + 1)  # the calls in flight and one more queued
            initial = todo[: initial_share(len(todo), job.size, limit) * job.size]
            job.pool = RowPool(job.prompt_set, todo[len(initial):], job.size, minimum=concurrency, limit=limit,
                               handed=np.diff(contiguous_bounds(len(initial), job.size)))
        elif job.ensemble is not None:  # each rank its own rows
            initial, counts = job.ensemble.rank_order(todo)
    job.piece = scatter_rows(job.prompt_set, initial, comm=job.comm, counts=counts)
    job.stats.t_scatter = job.phase("scatter")


def _send(job: Job) -> None:
    """Phase requests: every rank's calls (rows checkpointed as they finish), until every row
    is answered or failed, or a stop."""
    config, plan, stats = job.config, job.plan, job.stats
    printer = None
    if job.root and not config.report.quiet and config.report.progress != "none":
        printer = ProgressPrinter(plan.n_rows, plan.n_finished, mode=config.report.progress,
                                  interval=config.report.progress_interval)
    shard = ShardWriter(shard_path(plan.run_dir, job.rank, plan.attempt))
    t0 = time.perf_counter()
    job.urls = _ring([p.url for p in job.reports], job.rank)
    try:
        chunks, job.dead = asyncio.run(_serve(job.urls, config, job.piece, plan, stats, shard, job.stop, job.pool,
                                              printer, job.comm, job.down_at_start, job.budget))
    finally:
        shard.close()
    results = job.results = ResultColumns.concat([c.results for c in chunks])
    stats.t_requests = time.perf_counter() - t0
    stats.n_prompts = int(results.done.sum())
    stats.n_ok = int(results.ok.sum())
    stats.extra["dead_endpoints"] = job.dead
    stats.extra["rows_per_model"] = _rows_per_model(chunks, config.client.model)
    # A stopped job (SIGTERM at the walltime: PBS kills it a few seconds later) does not wait on
    # its endpoint's /metrics: a server being stopped beside it may hold the connection open.
    if job.metrics_before is not None and job.stop.reason is None:
        for name, value in engine_deltas(job.metrics_before, asyncio.run(_read_metrics(job.url, config))).items():
            setattr(stats, name, value)
    _mpi.barrier_sleeping(job.comm)  # the slowest rank sets the end of the request phase; the others sleep
    job.phase("requests")


def _write(job: Job) -> int:
    """Phases gather (and reduce) and write: the rows into the output file through its layout,
    a tree reduction if asked, the ranks table and attributes; the exit code, on every rank.
    A write that fails (disk full, quota) ends the run resumable: nothing half-written at the
    output path, the checkpoints kept."""
    config, comm, plan, stats, root = job.config, job.comm, job.plan, job.stats, job.root
    t0 = time.perf_counter()
    layout = layout_for(config.output.layout, config.output.path, plan.n_rows, plan.n, job.finished, job.results,
                        job.prompt_set, job.ensemble, bool(config.schedule.repeat), comm,
                        parts_per=config.output.parts_per)
    guard = WriteGuard(config.output.path) if root else None
    try:
        opened = layout.begin(guard)
        with ExitStack() as writing:
            out = guard.enter(writing, opened) if root else None
            write_s = layout.write_rows(out, guard)
            failed = _mpi.bcast(guard.message if root else None, comm)
            if failed:
                if root:
                    guard.check()  # raised inside the file's context: its temporary file is removed
                raise WriteFailed(failed)
            tally, votes = layout.tally, layout.votes
            if votes is not None:
                out.write_ensemble(job.ensemble, votes.votes())
            stats.t_gather = time.perf_counter() - t0 - write_s
            reduction, reduce_s = None, 0.0
            if config.reduce is not None and _mpi.bcast(root and tally.open == 0 and tally.rows == plan.n_rows, comm):
                r0 = time.perf_counter()
                combiner = Combiner(job.urls, config, stats, job.dead, job.stop)
                reduction = reduce_tree(Items.from_results(layout.held), plan.n_rows * plan.n, combiner, comm)
                reduce_s = time.perf_counter() - r0
                if root:
                    out.write_reduce(reduction)
            stats.cpu_s = time.process_time()
            stats.max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            all_stats = gather_stats(stats, comm)
            stop_reasons = _mpi.gather(job.stop.reason, comm)
            if root:  # from here on the root alone: a failure below reaches no other rank
                complete = tally.open == 0 and tally.rows == plan.n_rows and (reduction is None or reduction.complete)
                out.write_ranks(all_stats)
                _record_times(job, write_s, reduce_s, reduction is not None)
                out.set_attrs({
                    "model": config.client.model,
                    "n_ranks": job.size,
                    "complete": complete,
                    "attempt": plan.attempt,
                    "n_resumed": plan.n_finished,
                    "params": config.params(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **{f"time_{k}_s": v for k, v in job.times.items()},
                })
    except WriteFailed as exc:  # every rank
        return _write_failed(str(exc), config, plan, layout.parts, root, comm)
    except OSError as exc:  # the root alone: its file's metadata, closing or renaming it
        if not root:
            raise
        guard.error = guard.error or exc
        return _write_failed(guard.message, config, plan, layout.parts, root, comm)
    code = None
    if root:
        code = _finish(job, layout, complete, reduction, all_stats, stop_reasons)
    return _mpi.bcast(code, comm)


def _rows_per_model(chunks: list, default: str) -> dict:
    """Rows this rank held, by the model they name (``--model`` for rows that name none)."""
    counts: dict = {}
    for key, rows in Counter(key for chunk in chunks for key in chunk.overrides).items():  # distinct keys: few
        model = row_model(key) or default
        counts[model] = counts.get(model, 0) + rows
    return counts


def _record_times(job: Job, write_s: float, reduce_s: float, reduced: bool) -> None:
    """The phase times after the requests: gather (less the writing and the reduction), write,
    reduce, and the total."""
    times = job.times
    job.phase("gather")
    times["write"] = write_s
    times["gather"] -= write_s + reduce_s
    if reduced:
        times["reduce"] = reduce_s
    times["total"] = _mpi.wtime() - job.started


def _finish(job: Job, layout: Layout, complete: bool, reduction, all_stats: list, stop_reasons: list) -> int:
    """Root: earlier runs' parts and, for a complete run, the run directory removed; the
    summary printed; the exit code."""
    config, plan, tally = job.config, job.plan, layout.tally
    remove_stale_parts(config.output.path, keep=[p for p, _, k in layout.parts if k])  # earlier runs' parts
    if complete:
        remove_run_dir(plan.run_dir)
        all_ok = tally.ok == tally.rows and (reduction is None or reduction.final_ok)
        code = EXIT_OK if all_ok else EXIT_PROMPTS_FAILED
    else:
        code = EXIT_RESUME
    why = next((r for r in stop_reasons if r), None)
    _say(config, format_summary(tally, all_stats, job.times, os.path.abspath(config.output.path),
                                resumed=plan.n_finished, stopped=why))
    if layout.votes is not None:
        _say(config, format_votes(layout.votes.votes(), job.ensemble))
    if reduction is not None:
        _say(config, format_reduction(reduction))
    return code
