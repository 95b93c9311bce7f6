"""One ``mpiswarm run`` on every rank: input → scatter → client → gather → store.

Each phase is a function of its own; :func:`run` strings them together and returns the
exit code, the same on every rank.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import _mpi
from .client import ClientOptions, EndpointClient, EndpointUnavailable
from .endpoints import check_template, endpoint_from_hostfile, expand_endpoint, parse_hostfile
from .gather import gather_results, gather_stats
from .inputs import InputError, PromptSet, read_prompts
from .partition import plan_calls
from .records import RankStats, ResultColumns
from .scatter import RankSlice, scatter_rows
from .store import create_result_file
from .summary import format_summary

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"

# Exit codes (documented in the README).
EXIT_OK = 0  # every prompt answered
EXIT_USAGE = 2  # usage or input error: nothing sent, no output file
EXIT_PROMPTS_FAILED = 3  # finished; some prompts failed, each with its error
EXIT_ENDPOINT_DOWN = 4  # an endpoint never became healthy: nothing sent, no output file


@dataclass
class RunConfig:
    """Everything ``mpiswarm run`` needs (built from the command line or by the Python API)."""

    input: str
    output: str
    client: ClientOptions
    sampling: dict = field(default_factory=dict)
    endpoint: str = DEFAULT_ENDPOINT
    hostfile: str | None = None
    base_port: int = 8000
    health_timeout: float = 120.0
    quiet: bool = False

    def params(self) -> dict:
        """The run's options as stored in the file's ``params`` attribute (no secrets)."""
        c = self.client
        return {
            "sampling": self.sampling,
            "api": c.api,
            "batch_size": c.batch_size,
            "concurrency": c.calls_in_flight(),
            "request_timeout": c.request_timeout,
            "per_prompt_timeout": c.per_prompt_timeout,
            "endpoint": None if self.hostfile else self.endpoint,
            "hostfile": self.hostfile,
            "base_port": self.base_port,
            "health_timeout": self.health_timeout,
            "input": os.path.abspath(self.input),
        }


def _say(config: RunConfig, message: str) -> None:
    if not config.quiet:
        print(message, flush=True)


def _check_output(config: RunConfig) -> None:
    out = os.path.abspath(config.output)
    directory = os.path.dirname(out)
    if not os.path.isdir(directory):
        raise InputError(f"{config.output}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{config.output}: output directory {directory} is not writable")
    if os.path.exists(config.input) and os.path.exists(out) and os.path.samefile(config.input, out):
        raise InputError(f"{config.output}: the output would overwrite the input")
    if os.path.isdir(out):
        raise InputError(f"{config.output}: is a directory")


def _read_on_root(config: RunConfig, comm) -> tuple[PromptSet | None, list | None, int]:
    """Root reads and validates everything; every rank learns the outcome.

    Returns ``(prompt_set, hostfile_entries, n)`` — the prompt set on the root only.
    Raises :class:`InputError` on every rank when the input is bad.
    """
    prompt_set = entries = None
    error = None
    n = config.sampling.get("n", 1)
    if _mpi.rank_and_size(comm)[0] == _mpi.ROOT:
        try:
            if config.hostfile:
                entries = parse_hostfile(config.hostfile)
            else:
                check_template(config.endpoint)
            _check_output(config)
            prompt_set = read_prompts(config.input)
            n = max([n] + [json.loads(k).get("n", 1) for k in set(prompt_set.overrides) if k])
        except InputError as exc:
            error = str(exc)
    error, entries, n = _mpi.bcast((error, entries, n), comm)
    if error:
        raise InputError(error)
    return prompt_set, entries, n


def _endpoint_url(config: RunConfig, entries, comm) -> str:
    rank, _ = _mpi.rank_and_size(comm)
    if entries:
        return endpoint_from_hostfile(entries, rank)
    return expand_endpoint(
        config.endpoint, rank=rank, local_rank=_mpi.local_rank(comm), host=_mpi.hostname(), base_port=config.base_port
    )


async def _check_endpoint(url: str, config: RunConfig) -> tuple[str | None, int]:
    """(why the endpoint is unusable or None, its max_model_len)."""
    async with EndpointClient(url, config.client) as client:
        try:
            await client.wait_healthy(config.health_timeout)
        except EndpointUnavailable as exc:
            return str(exc), -1
        return None, await client.max_model_len()


async def _serve_slice(url: str, config: RunConfig, piece: RankSlice, results: ResultColumns, stats: RankStats):
    plans = plan_calls(piece.overrides, config.client.batch_size)
    async with EndpointClient(url, config.client) as client:
        await client.run(piece.prompts, plans, config.sampling, results, stats)


def run(config: RunConfig, comm=None) -> int:
    """Run the whole job on this rank; returns the exit code (identical on every rank).

    Raises :class:`~mpiswarm.inputs.InputError` (on every rank) for bad input, before
    anything is sent.
    """
    rank, size = _mpi.rank_and_size(comm)
    root = rank == _mpi.ROOT
    times: dict[str, float] = {}
    t_start = t = _mpi.wtime()

    def phase(name: str) -> None:
        nonlocal t
        now = _mpi.wtime()
        times[name] = now - t
        t = now

    prompt_set, entries, n = _read_on_root(config, comm)
    phase("read")

    url = _endpoint_url(config, entries, comm)
    stats = RankStats(rank=rank, host=_mpi.hostname(), endpoint=url)
    why, stats.max_model_len = asyncio.run(_check_endpoint(url, config))
    problems = [p for p in _mpi.allgather((rank, stats.host, url, why), comm) if p[3]]
    if problems:
        if root:
            for r, host, u, reason in problems:
                print(f"mpiswarm: rank {r} on {host}: endpoint {u} unavailable: {reason}", flush=True)
        return EXIT_ENDPOINT_DOWN
    phase("health")
    stats.t_health = times["health"]

    piece = scatter_rows(prompt_set, comm)
    phase("scatter")
    stats.t_scatter = times["scatter"]

    results = ResultColumns.pending(piece.index, n, rank)
    t0 = time.perf_counter()
    asyncio.run(_serve_slice(url, config, piece, results, stats))
    stats.t_requests = time.perf_counter() - t0
    stats.n_prompts = len(piece.prompts)
    stats.n_ok = int(results.ok.sum())
    _mpi.barrier(comm)  # the slowest rank sets the end of the request phase
    phase("requests")

    t0 = time.perf_counter()
    everything = gather_results(results, comm)
    stats.t_gather = time.perf_counter() - t0
    stats.cpu_s = time.process_time()
    all_stats = gather_stats(stats, comm)
    phase("gather")

    code = None
    if root:
        attrs = {
            "model": config.client.model,
            "n_ranks": size,
            "complete": True,
            "params": config.params(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with create_result_file(config.output, len(prompt_set), n) as out:
            out.write_rows(prompt_set.prompts, prompt_set.custom_ids, everything)
            out.write_ranks(all_stats)
            phase("write")
            times["total"] = _mpi.wtime() - t_start
            attrs.update({f"time_{k}_s": v for k, v in times.items()})
            out.set_attrs(attrs)
        _say(config, format_summary(everything, all_stats, times, os.path.abspath(config.output)))
        code = EXIT_OK if bool(np.all(everything.ok)) else EXIT_PROMPTS_FAILED
    return _mpi.bcast(code, comm)
