"""``mpiswarm`` command line: ``run`` (under mpiexec), ``demo``, ``inspect``, ``export``, ``scaling``,
``preflight`` (a job's checks, on the login node).

``main()`` is the abort guard: usage and input errors exit 2 with one line and no traceback;
any other exception on any rank aborts the whole MPI job with a message naming the rank and
host, so a PBS job never hangs in a collective.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__
from .balance import DEFAULT_MAX_PROMPTS_PER_CALL
from .chat import CHAT_ROUTES
from .exitcodes import EXIT_USAGE
from .inputs import InputError, check_prompt_options, option_name, validate_sampling
from .options import validate as validate_options
from .template import unescape

API_KEY_VARIABLES = ("MPISWARM_API_KEY", "OPENAI_API_KEY")
# Launchers' rank variables, read before MPI starts so only one rank prints usage errors.
_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")


def launcher_rank() -> int:
    """This process's rank: from MPI once it runs, else from the launcher's environment."""
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD.Get_rank()
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, printed by one rank only, exit 2
        if launcher_rank() == 0:
            print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _max_tokens(text: str) -> int | str:
    """``--max-tokens``: a positive integer, or ``auto``."""
    return "auto" if text == "auto" else _positive_int(text)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="prompts: .jsonl (plain or OpenAI Batch rows) or .txt (one a line)")
    p.add_argument("-o", "--output", required=True, help="the HDF5 result file to write")
    p.add_argument("--layout", choices=("single", "virtual"), default="single",
                   help="single (default): rank 0 writes one self-contained file; virtual: every rank "
                   "writes its block of rows to OUTPUT.parts/ in parallel and OUTPUT maps them with HDF5 "
                   "virtual datasets (for millions of prompts; keep the two together)")
    p.add_argument("--parts-per", choices=("rank", "node"), default="rank",
                   help="with --layout virtual: one part file a rank (default; every rank writes), or one a node "
                   "(the node's first rank writes its node's rows: fewer files at thousands of ranks)")
    p.add_argument("--model", required=True, help="model name sent with every request")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint", default=None,
        help="this rank's endpoint URL; placeholders {rank} {local_rank} {host} {port} "
        "({port} = --base-port + local rank). Default http://127.0.0.1:8000/v1",
    )
    where.add_argument("--hostfile", help="Aurora-Swarm hostfile: rank r uses entry r mod the count")
    p.add_argument("--base-port", type=int, default=8000, help="first port for {port} (default 8000)")
    p.add_argument("--health-timeout", type=_positive_float, default=120.0,
                   help="seconds to wait for the endpoint's /health (default 120)")
    p.add_argument("--min-endpoints", type=_positive_int, default=None,
                   help="go on when at least this many endpoints are healthy at the start; ranks whose "
                   "endpoint is down use the others (default: every endpoint must be up)")
    s = p.add_argument_group("sampling (a JSONL row may override any of these for itself)")
    s.add_argument("--max-tokens", type=_max_tokens, default=256,
                   help="default 256; auto: per prompt, what fits in the endpoints' max_model_len beside it")
    s.add_argument("--max-tokens-cap", type=_positive_int, default=None,
                   help="with --max-tokens auto: never more than this (default: whatever fits)")
    s.add_argument("--temperature", type=float, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    s.add_argument("--n", type=_positive_int, default=1, help="completions per prompt (default 1)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other request option vLLM takes, for every row (repeatable; VALUE is JSON, else a "
                   "string): --option top_k=20 --option min_p=0.05 --option 'structured_outputs={\"choice\": "
                   "[\"yes\", \"no\"]}' --option logprobs=2; rows' own options win (see the README's options table)")
    m = p.add_argument_group("prompts (\\n, \\t and \\\\ in these are newline, tab and backslash)")
    m.add_argument("--template", default=None,
                   help="map template: build each prompt from its JSONL row's fields, e.g. "
                   "'Analyze gene {gene} in {organism}' (rows then need no prompt)")
    m.add_argument("--prompt-format", default=None,
                   help="chat format put around every prompt before it is sent, e.g. "
                   "'<|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n' (must contain {prompt})")
    t = p.add_argument_group("throughput")
    t.add_argument("--api", choices=("completions", "chat"), default="completions",
                   help="completions: batched /v1/completions lists (default); chat: every prompt as a "
                   "conversation of one user message (rows with 'messages' are chat rows either way)")
    t.add_argument("--chat-route", choices=CHAT_ROUTES, default="auto",
                   help="chat rows: auto (default) sends lists of conversations to /v1/chat/completions/batch "
                   "where every endpoint serves it (vLLM >= 0.32), else one /v1/chat/completions call a "
                   "conversation; single: always one call a conversation")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help="prompts per HTTP call (default: sized to keep the engine full; --schedule static: the "
                   "rank's whole slice), never more than --max-prompts-per-call")
    t.add_argument("--max-prompts-per-call", type=_positive_int, default=DEFAULT_MAX_PROMPTS_PER_CALL,
                   help="most prompts one /v1/completions call carries (default 1024: vLLM refuses longer lists "
                   "unless its server sets VLLM_MAX_COMPLETION_PROMPTS higher); a 400 naming a lower limit "
                   "splits the list by it")
    t.add_argument("--concurrency", type=_positive_int, default=None,
                   help="calls in flight per rank (default 8 for lists, 128 for chat)")
    t.add_argument("--schedule", choices=("dynamic", "static"), default="dynamic",
                   help="dynamic (default): ranks that run dry get more work from rank 0 in shrinking "
                   "chunks; static: one contiguous slice per rank")
    t.add_argument("--max-num-seqs", type=_positive_int, default=256,
                   help="sequences each engine runs at once (vLLM's --max-num-seqs, default 256): the "
                   "dynamic schedule keeps about twice that in flight per rank")
    t.add_argument("--request-timeout", type=_positive_float, default=600.0,
                   help="seconds a call may take, plus 0.5 s per prompt in it (default 600)")
    f = p.add_argument_group("fault tolerance")
    f.add_argument("--max-attempts", type=_positive_int, default=6,
                   help="attempts of one call on one endpoint before it is declared dead (default 6)")
    f.add_argument("--revive-interval", type=_non_negative_float, default=30.0, metavar="S",
                   help="seconds between looks at dead endpoints (and those down at the start under "
                   "--min-endpoints): one healthy again is used again (default 30; 0: never)")
    f.add_argument("--time-limit", type=_positive_float, default=None,
                   help="seconds after the start to stop sending and write what is answered "
                   "(exit 75: run again to resume); set it a few minutes under the walltime")
    f.add_argument("--restart", action="store_true",
                   help="discard an earlier interrupted attempt's checkpoints and start over")
    p.add_argument("--repeat", type=_positive_int, default=None, metavar="K",
                   help="broadcast ensemble: every prompt to every rank's endpoint K times, each with a seed "
                   "of its own (--seed + rank * K + k); majority votes per prompt in group ensemble")
    r = p.add_argument_group("tree reduction (after the answers: combine them K at a time, level by level)")
    r.add_argument("--reduce-prompt", default=None, metavar="TEMPLATE",
                   help="supervisor prompt combining a group of answers: {responses} (the group's answers "
                   "joined by --joiner), {level}, {group}; \\n in it is a newline")
    r.add_argument("--fanin", type=_at_least_two, default=8, help="answers combined per group (default 8)")
    r.add_argument("--joiner", default="\\n---\\n", help="between a group's answers (default '\\n---\\n')")
    r.add_argument("--reduce-max-tokens", type=_positive_int, default=None,
                   help="max_tokens of a combined answer (default: --max-tokens)")
    p.add_argument("--progress", choices=("auto", "bar", "log", "none"), default="auto",
                   help="live progress on rank 0: a bar on a terminal, else a log line (default auto)")
    p.add_argument("--progress-interval", type=_positive_float, default=None,
                   help="seconds between progress lines (default 10; 0.25 for the bar)")
    p.add_argument("-q", "--quiet", action="store_true", help="print no summary and no progress")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mpiswarm", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mpiswarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run a prompt set (launch with mpiexec -n N)",
                         description="Run a prompt set through one endpoint per MPI rank.")
    _add_run_arguments(run)
    demo = sub.add_parser("demo", help="start simulated endpoints on loopback and run an example job")
    demo.add_argument("-n", "--ranks", type=_positive_int, default=4, help="MPI ranks (default 4)")
    demo.add_argument("-o", "--output", default="mpiswarm-demo.h5", help="default mpiswarm-demo.h5")
    demo.add_argument("--prompts", default=None, help="prompt file (default: the shipped example set)")
    demo.add_argument("--time-scale", type=float, default=1.0,
                      help="simulated engine time scale (default 1: vLLM-like timing; 0: instant)")
    for tool in _tools().values():
        tool.add_parser(sub)
    return parser


def _tools() -> dict:
    """The MPI-free tools: subcommand name -> module with add_parser and main."""
    from . import export, inspect, preflight, scaling

    return {"inspect": inspect, "export": export, "scaling": scaling, "preflight": preflight}


def command_line_options(items: list[str]) -> dict:
    """``--option KEY=VALUE`` as a dict: VALUE parsed as JSON, else taken as a string."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r}: write KEY=VALUE")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def config_from_args(args):
    """A :class:`~mpiswarm.config.RunConfig` from parsed ``run`` arguments (MPI-free)."""
    from .client import ClientOptions
    from .config import DEFAULT_ENDPOINT, ReduceOptions, RunConfig
    from .retry import RetryPolicy

    auto = args.max_tokens == "auto"
    if args.max_tokens_cap is not None and not auto:
        raise InputError("command line: --max-tokens-cap needs --max-tokens auto")
    try:
        sampling = validate_sampling(
            {"max_tokens": None if auto else args.max_tokens, "temperature": args.temperature,
             "top_p": args.top_p, "seed": args.seed, "stop": args.stop, "n": args.n}, option_name
        )
        extra = command_line_options(args.option)
        if extra:
            def name(key: str) -> str:
                return f"--option {key}" if key in extra else option_name(key)

            sampling = validate_options({**sampling, **extra}, "chat" if args.api == "chat" else "completions", name)
    except ValueError as exc:
        raise InputError(f"command line: {exc}") from None
    reduce = None
    if args.reduce_prompt is not None:
        from .tree import check_reduce_template

        template = unescape(args.reduce_prompt)
        try:
            check_reduce_template(template)
        except ValueError as exc:
            raise InputError(f"command line: {exc}") from None
        reduce = ReduceOptions(template, args.fanin, unescape(args.joiner), args.reduce_max_tokens)
    map_template = None if args.template is None else unescape(args.template)
    prompt_format = None if args.prompt_format is None else unescape(args.prompt_format)
    check_prompt_options(map_template, prompt_format)
    api_key = next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), "EMPTY")
    client = ClientOptions(
        model=args.model, api=args.api, chat_route=args.chat_route, api_key=api_key, batch_size=args.batch_size,
        concurrency=args.concurrency, request_timeout=args.request_timeout,
        max_prompts_per_call=args.max_prompts_per_call,
    )
    return RunConfig.build(
        input=args.input, output=args.output, client=client, sampling=sampling,
        endpoint=args.endpoint or DEFAULT_ENDPOINT, hostfile=args.hostfile, base_port=args.base_port,
        health_timeout=args.health_timeout, min_endpoints=args.min_endpoints, time_limit=args.time_limit,
        revive_interval=args.revive_interval,
        restart=args.restart,
        retry=RetryPolicy(max_attempts=args.max_attempts), schedule=args.schedule, max_num_seqs=args.max_num_seqs,
        progress=args.progress, progress_interval=args.progress_interval, quiet=args.quiet, reduce=reduce,
        repeat=args.repeat, layout=args.layout, parts_per=args.parts_per,
        template=map_template, prompt_format=prompt_format, max_tokens_auto=auto, max_tokens_cap=args.max_tokens_cap,
    )


def _run_command(args) -> int:
    config = config_from_args(args)  # raises InputError before MPI starts
    from . import runner

    return runner.run(config)


def _guarded(command, args) -> int:
    """Run ``command``; input errors → exit 2, anything else → abort the whole MPI job."""
    try:
        return command(args)
    except InputError as exc:
        if launcher_rank() == 0:
            print(f"mpiswarm: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        if "mpi4py.MPI" not in sys.modules:
            raise
        from . import _mpi

        _mpi.abort_on_exception(exc)
        raise  # pragma: no cover - Abort does not return


#: where rank 0 writes the job's exit code, if set (the job scripts set it): after a signal it
#: forwarded, MPICH's Hydra reports signal 9 for a rank it SIGKILLed while it was finalising
#: (:func:`mpiswarm._mpi.exit_together`), whatever code the job ended with
EXIT_FILE_VARIABLE = "MPISWARM_EXIT_FILE"


def entry() -> None:
    """The ``mpiswarm`` command: :func:`main`, then the process ends with its exit code — for
    an MPI job, on every rank together (:func:`mpiswarm._mpi.exit_together`), after rank 0 has
    written it to ``$MPISWARM_EXIT_FILE`` if that is set (before any rank exits).
    ``kill -USR2`` prints where it is (:mod:`mpiswarm.stacks`)."""
    from . import stacks

    stacks.install(f"mpiswarm rank {launcher_rank()}")
    code = main()
    path = os.environ.get(EXIT_FILE_VARIABLE)
    if path and launcher_rank() == 0:
        _write_exit_file(path, code)
    if "mpi4py.MPI" in sys.modules:
        from . import _mpi

        _mpi.exit_together(code)
    sys.exit(code)


def _write_exit_file(path: str, code: int) -> None:
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            fh.write(f"{code}\n")
        os.replace(tmp, path)  # whole or absent: a reader never sees half a number
    except OSError as exc:
        print(f"mpiswarm: cannot write the exit code to {EXIT_FILE_VARIABLE}={path}: {exc.strerror}",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _guarded(_run_command, args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args)
    tools = _tools()
    if args.command in tools:
        return _guarded(tools[args.command].main, args)
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices
