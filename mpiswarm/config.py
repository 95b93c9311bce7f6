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
class EndpointOptions:
    """Where the endpoints are and how they are watched."""

    endpoint: str = DEFAULT_ENDPOINT  # a template: {host}, {port}, {rank}, {local_rank}
    hostfile: str | None = None
    base_port: int = 8000
    health_timeout: float = 120.0
    min_endpoints: int | None = None  # None: every endpoint must be healthy at the start
    #: seconds between looks at the dead endpoints (and those down at the start): one healthy
    #: again returns to service; None or 0: a dead endpoint stays dead
    revive_interval: float | None = 30.0


@dataclass
class ScheduleOptions:
    """How rows are dealt to ranks and calls, retried, and when the job stops."""

    mode: str = "dynamic"  # or "static": one contiguous slice per rank, nothing moves after
    max_num_seqs: int = 256  # the engines' concurrent sequences: sizes calls to keep them full
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    time_limit: float | None = None  # seconds from the start: stop sending, write what is answered
    repeat: int | None = None  # a broadcast ensemble: every prompt to every endpoint this many times


@dataclass
class PromptOptions:
    """What is sent: the sampling options and how each prompt is built."""

    sampling: dict = field(default_factory=dict)
    template: str | None = None  # map template: each prompt built from its JSONL row's fields
    prompt_format: str | None = None  # chat format around each prompt, e.g. '<|user|>\n{prompt}…'
    max_tokens_auto: bool = False  # each prompt's max_tokens: what fits in max_model_len beside it
    max_tokens_cap: int | None = None  # with max_tokens_auto: never more than this


@dataclass
class OutputOptions:
    """Where the results go and how the file is written."""

    path: str
    restart: bool = False  # ignore (delete) an earlier attempt's run directory
    #: "single": rank 0 gathers every row and writes one self-contained file; "virtual": every
    #: rank writes its block of rows to a part file in OUTPUT.parts/ and the output's datasets
    #: are HDF5 virtual datasets over them (no row passes through rank 0's writer)
    layout: str = "single"
    #: the virtual layout's part files: one a rank (every rank writes), or one a node (the
    #: node's first rank writes the node's rows: fewer files and virtual mappings at scale)
    parts_per: str = "rank"


@dataclass
class ReportOptions:
    """What the job prints while it runs."""

    progress: str = "auto"  # bar, log, none; auto: a bar on a terminal, else a log line
    progress_interval: float | None = None
    quiet: bool = False


#: RunConfig's option groups: attribute name -> class (RunConfig.build deals flat keywords to them)
_GROUPS = {"endpoints": EndpointOptions, "schedule": ScheduleOptions, "prompts": PromptOptions,
           "output": OutputOptions, "report": ReportOptions}
#: flat keyword -> (group, field): the command line's and the Python API's names
_FLAT = {("schedule" if name == "mode" else name): (group, name)
         for group, cls in _GROUPS.items() for name in (f.name for f in dataclasses.fields(cls))
         if name != "path"}
FLAT_OPTIONS = frozenset(_FLAT)


@dataclass
class RunConfig:
    """Everything ``mpiswarm run`` needs, in the groups it naturally has (built from the
    command line or by the Python API through :meth:`build`)."""

    input: str
    output: OutputOptions
    client: ClientOptions
    endpoints: EndpointOptions = field(default_factory=EndpointOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    prompts: PromptOptions = field(default_factory=PromptOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    reduce: ReduceOptions | None = None  # a tree reduction of the answers after the map phase

    @classmethod
    def build(cls, input: str, output: str, client: ClientOptions, reduce: ReduceOptions | None = None,
              **options) -> "RunConfig":
        """A config from flat keywords (``schedule="static"``, ``layout="virtual"``, …: the
        command line's names), each dealt to its group; TypeError for one no group has."""
        grouped: dict[str, dict] = {name: {} for name in _GROUPS}
        for key, value in options.items():
            if key not in _FLAT:
                raise TypeError(f"unknown option {key!r}")
            group, name = _FLAT[key]
            grouped[group][name] = value
        return cls(input=input, client=client, reduce=reduce,
                   output=OutputOptions(path=output, **grouped.pop("output")),
                   **{group: _GROUPS[group](**values) for group, values in grouped.items()})

    def balances(self, n_ranks: int) -> bool:
        """Whether work moves between ranks (the dynamic schedule, with someone to move it to)."""
        return self.schedule.mode == "dynamic" and n_ranks > 1 and not self.schedule.repeat  # an ensemble's rows are pinned

    def call_rows(self) -> int:
        """Rows a call carries on the dynamic schedule: ``--batch-size``, else enough that the
        calls in flight keep the engine full."""
        return self.client.batch_size or call_cap(self.schedule.max_num_seqs, self.client.calls_in_flight())

    def answer_options(self) -> dict:
        """The options that change answers: a resume must use the same ones."""
        p = self.prompts
        return {"model": self.client.model, "api": self.client.api, "sampling": p.sampling,
                "repeat": self.schedule.repeat,
                "template": p.template, "prompt_format": p.prompt_format,
                "max_tokens_auto": p.max_tokens_auto, "max_tokens_cap": p.max_tokens_cap}

    def params(self) -> dict:
        """The run's options as stored in the file's ``params`` attribute (no secrets)."""
        c, e, s, p, o = self.client, self.endpoints, self.schedule, self.prompts, self.output
        return {
            "sampling": p.sampling,
            "api": c.api,
            "batch_size": c.batch_size,
            "concurrency": c.calls_in_flight(),
            "request_timeout": c.request_timeout,
            "per_prompt_timeout": c.per_prompt_timeout,
            "max_prompts_per_call": c.max_prompts_per_call,
            "revive_interval": e.revive_interval,
            "endpoint": None if e.hostfile else e.endpoint,
            "hostfile": e.hostfile,
            "base_port": e.base_port,
            "health_timeout": e.health_timeout,
            "min_endpoints": e.min_endpoints,
            "time_limit": s.time_limit,
            "schedule": s.mode,
            "max_num_seqs": s.max_num_seqs,
            "retry": dataclasses.asdict(s.retry),
            "reduce": self.reduce.as_dict() if self.reduce else None,
            "repeat": s.repeat,
            "input": os.path.abspath(self.input),
            "template": p.template,
            "prompt_format": p.prompt_format,
            "max_tokens_auto": p.max_tokens_auto,
            "max_tokens_cap": p.max_tokens_cap,
            "layout": o.layout,
            "parts_per": o.parts_per,
        }


def check_output(config: RunConfig) -> None:
    """Raise :class:`InputError` (one line) for an output path ``mpiswarm run`` cannot write:
    its directory missing or read-only, the input itself, a directory, an unknown layout."""
    output = config.output
    out = os.path.abspath(output.path)
    directory = os.path.dirname(out)
    if not os.path.isdir(directory):
        raise InputError(f"{output.path}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InputError(f"{output.path}: output directory {directory} is not writable")
    if os.path.exists(config.input) and os.path.exists(out) and os.path.samefile(config.input, out):
        raise InputError(f"{output.path}: the output would overwrite the input")
    if os.path.isdir(out):
        raise InputError(f"{output.path}: is a directory")
    if output.layout not in LAYOUTS:
        raise InputError(f"--layout: must be one of {', '.join(LAYOUTS)}, got {output.layout!r}")
    if output.parts_per not in PARTS_PER:
        raise InputError(f"--parts-per: must be one of {', '.join(PARTS_PER)}, got {output.parts_per!r}")
