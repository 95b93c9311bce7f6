"""The Python API, for users who write their own mpi4py workflow.

Each function is collective: every rank of ``comm`` (default ``COMM_WORLD``) calls it with
the same keywords (the prompts are read on the root only: others may pass None), each rank talks to its own endpoint (``endpoint`` may hold ``{rank}``,
``{local_rank}``, ``{host}``, ``{port}`` as on the command line), and the root gets the
result — the others get None. Underneath is exactly ``mpiswarm run``: the same validation,
retries, failover, checkpoints and result file (kept at ``output=``, else written to a
temporary directory under ``workdir`` — the current directory by default, which every rank
must see — and removed).

Any option of ``mpiswarm run`` is a keyword: sampling (``max_tokens``, ``temperature``,
``top_p``, ``seed``, ``stop``, ``n``; ``max_tokens="auto"`` as ``--max-tokens auto``), client
(``api``, ``batch_size``, ``concurrency``, ``request_timeout``, ``api_key``) and run options
(``schedule``, ``max_num_seqs``, ``health_timeout``, ``hostfile``, ``time_limit``,
``template``, ``prompt_format``, ``max_tokens_cap``, …: the fields of
:class:`~mpiswarm.runner.RunConfig`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile

from . import _mpi
from .client import ClientOptions
from .config import DEFAULT_ENDPOINT, FLAT_OPTIONS, RunConfig
from .exitcodes import EXIT_ENDPOINT_DOWN, EXIT_USAGE
from .inputs import SAMPLING_KEYS, InputError, validate_sampling
from .reduce import ReduceOptions
from .runner import run
from .store import read_records, read_reduction
from .tree import DEFAULT_JOINER, check_reduce_template

_CLIENT_FIELDS = {f.name for f in dataclasses.fields(ClientOptions)} - {"model"}
_RUN_FIELDS = (FLAT_OPTIONS | {"reduce"}) - {"sampling"}


class JobFailed(RuntimeError):
    """The job could not run (an endpoint never became healthy, or does not serve the model);
    the message says why."""


def build_config(input: str, output: str, *, model: str, endpoint: str = DEFAULT_ENDPOINT,
                 **options) -> RunConfig:
    """A :class:`RunConfig` from keywords (see the module docstring); ValueError for a bad
    sampling value, TypeError for an unknown keyword."""
    if options.get("max_tokens") == "auto":  # as on the command line: per prompt, what fits
        del options["max_tokens"]
        options["max_tokens_auto"] = True
    sampling = validate_sampling({k: options.pop(k) for k in list(options) if k in SAMPLING_KEYS})
    if not options.get("max_tokens_auto"):
        sampling.setdefault("max_tokens", 256)
    client = ClientOptions(model=model, **{k: options.pop(k) for k in list(options) if k in _CLIENT_FIELDS})
    unknown = sorted(set(options) - _RUN_FIELDS)
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r}")
    options.setdefault("quiet", True)
    options.setdefault("progress", "none")
    return RunConfig.build(input=input, output=output, client=client, sampling=sampling, endpoint=endpoint, **options)


def _write_rows(path: str, prompts) -> None:
    """Prompts (strings, or dicts: JSONL rows with fields and per-row sampling) as JSONL."""
    with open(path, "w", encoding="utf-8") as fh:
        for item in prompts:
            row = {"prompt": item} if isinstance(item, str) else dict(item)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _run(prompts, comm, output: str | None, workdir: str | None, read, **options):
    """Run the job on every rank; ``read(path)`` of the result file on the root."""
    config = build_config("", "", **options)  # bad keywords fail here, before anything is created
    root = _mpi.rank_and_size(comm)[0] == _mpi.ROOT
    where = None
    if root:
        where = tempfile.mkdtemp(prefix="mpiswarm-api-", dir=workdir or os.getcwd())
        _write_rows(os.path.join(where, "prompts.jsonl"), prompts)
    where = _mpi.bcast(where, comm)
    out = os.path.abspath(output) if output else os.path.join(where, "results.h5")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = dataclasses.replace(config, input=os.path.join(where, "prompts.jsonl"),
                                     output=dataclasses.replace(config.output, path=out))
        code = run(config, comm)
    except InputError as exc:
        code, why = EXIT_USAGE, str(exc)
    finally:
        for sig, handler in handlers.items():  # run() installs its own (SIGTERM at walltime)
            if handler is not None:
                signal.signal(sig, handler)
    try:
        if code == EXIT_USAGE:
            raise InputError(why)
        if code == EXIT_ENDPOINT_DOWN:
            raise JobFailed("an endpoint is unusable: never healthy, or not serving the model (see the messages above)")
        return read(out) if root else None
    finally:
        _mpi.barrier(comm)  # every rank is done with the directory before the root removes it
        if root:
            shutil.rmtree(where, ignore_errors=True)


def scatter_gather(prompts, *, model: str, endpoint: str = DEFAULT_ENDPOINT, comm=None,
                   output: str | None = None, workdir: str | None = None, **options) -> list[dict] | None:
    """Answer ``prompts`` (strings, or dicts as JSONL rows) spread over the ranks; returns on
    the root one record a prompt, in input order: ``custom_id``, ``prompt``, ``completion``
    (a list when ``n`` > 1), ``finish_reason``, ``ok``, ``error``, ``rank``, token counts and
    ``latency_s``. Failed prompts are records with ``ok`` False and their ``error``."""
    return _run(prompts, comm, output, workdir, read_records, model=model, endpoint=endpoint, **options)


def broadcast(prompts, *, repeat: int, model: str, endpoint: str = DEFAULT_ENDPOINT, comm=None,
              output: str | None = None, workdir: str | None = None, **options) -> list[dict] | None:
    """Send every prompt to every rank's endpoint ``repeat`` times, each with a seed of its
    own; returns on the root one record an answer with ``source_row`` (which prompt),
    ``rank``, ``repeat`` and ``seed``. Aggregate with :mod:`mpiswarm.aggregate`."""
    return _run(prompts, comm, output, workdir, read_records, model=model, endpoint=endpoint, repeat=repeat,
                **options)


def tree_reduce(prompts, reduce_prompt: str, *, model: str, fanin: int = 8, joiner: str = DEFAULT_JOINER,
                reduce_max_tokens: int | None = None, endpoint: str = DEFAULT_ENDPOINT, comm=None,
                output: str | None = None, workdir: str | None = None, **options) -> dict | None:
    """Answer ``prompts``, then combine the answers ``fanin`` at a time with ``reduce_prompt``
    (``{responses}``, ``{level}``, ``{group}``) until one remains. Returns on the root
    ``{"final", "ok", "error", "levels": [{"text", "ok", "error", "prompt", …} per level],
    "records": [...]}``."""
    check_reduce_template(reduce_prompt)
    reduce = ReduceOptions(reduce_prompt, fanin, joiner, reduce_max_tokens)

    def read(path):
        return {**read_reduction(path), "records": read_records(path)}

    return _run(prompts, comm, output, workdir, read, model=model, endpoint=endpoint, reduce=reduce, **options)
