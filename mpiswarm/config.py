"""What one ``mpiswarm run`` is asked to do: :class:`RunConfig` and its checks (no MPI, no I/O
beyond looking at paths), shared by ``run``, ``preflight`` and the Python API."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from .balance import call_cap
from .client import ClientOptions
from .inputs import InputError
from .retry import RetryPolicy
from .tree import DEFAULT_JOINER

DEFAULT_ENDPOINT = "http://127.0.0.1:8000/v1"
#: how the result file is written (RunConfig.layout), and who writes a virtual layout's parts
LAYOUTS = ("single", "virtual")
PARTS_PER = ("rank", "node")


@dataclass
class ReduceOptions:
    """``--reduce-prompt``, ``--fanin``, ``--joiner`` and ``--reduce-max-tokens``."""

    template: str
    fanin: int = 8
    joiner: str = DEFAULT_JOINER
    max_tokens: int | None = None  # None: the map phase's --max-tokens

    def as_dict(self) -> dict:
        return {"template": self.template, "fanin": self.fanin, "joiner": self.joiner,
                "max_tokens": self.max_tokens}


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
    min_endpoints: int | None = None  # None: every endpoint must be healthy at the start
    #: seconds between looks at the dead endpoints (and those down at the start): one healthy
    #: again returns to service; None or 0: a dead endpoint stays dead
    revive_interval: float | None = 30.0
    time_limit: float | None = None  # seconds from the start: stop sending, write what is answered
    restart: bool = False  # ignore (delete) an earlier attempt's run directory
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    schedule: str = "dynamic"  # or "static": one contiguous slice per rank, nothing moves after
    max_num_seqs: int = 256  # the engines' concurrent sequences: sizes calls to keep them full
    progress: str = "auto"  # bar, log, none; auto: a bar on a terminal, else a log line
    progress_interval: float | None = None
    quiet: bool = False
    reduce: ReduceOptions | None = None  # a tree reduction of the answers after the map phase
    repeat: int | None = None  # a broadcast ensemble: every prompt to every endpoint this many times
    template: str | None = None  # map template: each prompt built from its JSONL row's fields
    prompt_format: str | None = None  # chat format around each prompt, e.g. '<|user|>\n{prompt}…'
    max_tokens_auto: bool = False  # each prompt's max_tokens: what fits in max_model_len beside it
    max_tokens_cap: int | None = None  # with max_tokens_auto: never more than this
    #: "single": rank 0 gathers every row and writes one self-contained file; "virtual": every
    #: rank writes its block of rows to a part file in OUTPUT.parts/ and the output's datasets
    #: are HDF5 virtual datasets over them (no row passes through rank 0's writer)
    layout: str = "single"
    #: the virtual layout's part files: one a rank (every rank writes), or one a node (the
    #: node's first rank writes the node's rows: fewer files and virtual mappings at scale)
    parts_per: str = "rank"

    def balances(self, n_ranks: int) -> bool:
        """Whether work moves between ranks (the dynamic schedule, with someone to move it to)."""
        return self.schedule == "dynamic" and n_ranks > 1 and not self.repeat  # an ensemble's rows are pinned

    def call_rows(self) -> int:
        """Rows a call carries on the dynamic schedule: ``--batch-size``, else enough that the
        calls in flight keep the engine full."""
        return self.client.batch_size or call_cap(self.max_num_seqs, self.client.calls_in_flight())

    def answer_options(self) -> dict:
        """The options that change answers: a resume must use the same ones."""
        return {"model": self.client.model, "api": self.client.api, "sampling": self.sampling,
                "repeat": self.repeat,
                "template": self.template, "prompt_format": self.prompt_format,
                "max_tokens_auto": self.max_tokens_auto, "max_tokens_cap": self.max_tokens_cap}

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
            "max_prompts_per_call": c.max_prompts_per_call,
            "revive_interval": self.revive_interval,
            "endpoint": None if self.hostfile else self.endpoint,
            "hostfile": self.hostfile,
            "base_port": self.base_port,
            "health_timeout": self.health_timeout,
            "min_endpoints": self.min_endpoints,
            "time_limit": self.time_limit,
            "schedule": self.schedule,
            "max_num_seqs": self.max_num_seqs,
            "retry": dataclasses.asdict(self.retry),
            "reduce": self.reduce.as_dict() if self.reduce else None,
            "repeat": self.repeat,
            "input": os.path.abspath(self.input),
            "template": self.template,
            "prompt_format": self.prompt_format,
            "max_tokens_auto": self.max_tokens_auto,
            "max_tokens_cap": self.max_tokens_cap,
            "layout": self.layout,
            "parts_per": self.parts_per,
        }


def check_output(config: RunConfig) -> None:
    """Raise :class:`InputError` (one line) for an output path ``mpiswarm run`` cannot write:
    its directory missing or read-only, the input itself, a directory, an unknown layout."""
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
    if config.layout not in LAYOUTS:
        raise InputError(f"--layout: must be one of {', '.join(LAYOUTS)}, got {config.layout!r}")
    if config.parts_per not in PARTS_PER:
        raise InputError(f"--parts-per: must be one of {', '.join(PARTS_PER)}, got {config.parts_per!r}")
