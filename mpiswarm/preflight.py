"""``mpiswarm preflight``: the problems that would doom a job, found before it burns node-hours.

Run on a login node (and by the job scripts before any server starts) with the same arguments
as ``mpiswarm run`` plus what only the job knows (walltime, ``HF_HOME``, the server's
``--max-model-len``, the ``mpiexec`` it will use). MPI-free: MPI is never initialised here; the
one look at mpi4py's library happens in a child Python that loads it without ``MPI_Init``.

Each problem is one line naming what and where::

    mpiswarm preflight: error: input prompts.jsonl: line 7: 'prompt' must be a string
    mpiswarm preflight: warning: output /home/u/out.h5: under $HOME (/home/u) ...

Exit 0 when nothing would doom the job (warnings allowed), 2 when something would.

The checks, and the documents behind them:

* the input, read and validated by the reader ``mpiswarm run`` uses (nothing is sent);
* the output directory: writable, room for the expected file, not under ``$HOME`` (ALCF,
  Getting Started on Aurora: home quota 50 GB; Running Jobs on Aurora: submit from the project
  directory, not home);
* the model's weights under ``HF_HOME`` when offline: ``config.json``, a tokenizer, the
  safetensors index and every shard it names (ALCF's Aurora vLLM guide: ``HF_HOME`` is
  ``/flare/datasets/model-weights``, Hugging Face appends ``hub/``);
* the requested ``--max-model-len`` within what the model's ``config.json`` allows, and
  ``--max-tokens`` below it;
* mpi4py's MPI library and the ``mpiexec`` that will launch it from the same installation;
* ``--time-limit`` below the job's walltime (``--walltime``, ``PBS_WALLTIME`` or the script's
  ``#PBS -l walltime=`` line).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from .inputs import InputError, read_prompts

PROG = "mpiswarm preflight"
#: an answer's bytes per token in the estimate of the output's size (English text: ~4)
BYTES_PER_TOKEN = 4
#: fixed bytes a row (custom_id, finish_reason, numbers, HDF5 overhead), in the estimate
ROW_OVERHEAD_BYTES = 96
#: the config.json keys vLLM derives a model's longest sequence from (the smallest one wins)
LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
               "max_sequence_length", "max_seq_length", "seq_len")
HOME_QUOTA_NOTE = ("home quota is 50 GB on Aurora (ALCF, Getting Started on Aurora); write to the project "
                   "directory, e.g. /lus/flare/projects/PROJECT/... (ALCF, Running Jobs on Aurora)")


@dataclass
class Report:
    """What preflight found: one line per check, errors doom the job, warnings do not."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.lines.append(("ok", text))

    def warn(self, text: str) -> None:
        self.lines.append(("warning", text))

    def error(self, text: str) -> None:
        self.lines.append(("error", text))

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.lines if kind == "error"]

    def render(self) -> str:
        return "".join(f"{PROG}: {kind}: {text}\n" for kind, text in self.lines)


# --- walltime --------------------------------------------------------------------------------

def parse_duration(text: str) -> float:
    """Seconds from ``SECONDS``, ``MM:SS`` or ``HH:MM:SS`` (PBS's walltime forms)."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
        raise ValueError(f"not a duration: {text!r} (expected SECONDS or HH:MM:SS)")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def script_walltime(path: str) -> str | None:
    """The ``walltime=`` of a job script's ``#PBS -l`` lines, None when it has none."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            match = re.match(r"#PBS\s.*\bwalltime=([0-9:.]+)", line)
            if match:
                return match.group(1)
    return None


def job_walltime(walltime: str | None, job_script: str | None) -> tuple[float | None, str]:
    """The job's walltime in seconds and where it came from: ``--walltime``, else
    ``PBS_WALLTIME``, else the job script's ``#PBS -l walltime=`` line. Raises ValueError for
    one that does not parse, naming its source."""
    sources = [("--walltime", walltime), ("PBS_WALLTIME", os.environ.get("PBS_WALLTIME"))]
    if job_script:
        try:
            sources.append((f"{job_script} (#PBS -l walltime)", script_walltime(job_script)))
        except OSError as exc:
            raise ValueError(f"{job_script}: cannot read ({exc.strerror})") from None
    for source, value in sources:
        if value:
            try:
                return parse_duration(value), source
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    return None, ""


def check_time_limit(report: Report, time_limit: float | None, walltime: float | None, source: str,
                     load_time: float | None) -> None:
    """``--time-limit`` (counted from mpiswarm's start) below the walltime, with the servers'
    load time (``load_time``) before it."""
    if walltime is None:
        report.warn("walltime: unknown (give --walltime, set PBS_WALLTIME, or --job-script): --time-limit not checked")
        return
    if time_limit is None:
        report.warn(f"--time-limit: not set; the walltime ({walltime:g} s, from {source}) ends the run with SIGTERM "
                    "and PBS's SIGKILL soon after: set it a few minutes under the walltime minus the servers' load time")
        return
    if time_limit >= walltime:
        report.error(f"--time-limit {time_limit:g} s: not below the walltime {walltime:g} s (from {source}): PBS kills "
                     "the job before mpiswarm stops and writes its partial file")
        return
    if load_time and time_limit + load_time >= walltime:
        report.warn(f"--time-limit {time_limit:g} s: with up to {load_time:g} s of server loading before mpiswarm "
                    f"starts, it may end after the walltime {walltime:g} s (from {source})")
        return
    report.ok(f"--time-limit {time_limit:g} s below the walltime {walltime:g} s (from {source})")


# --- input and output --------------------------------------------------------------------------

def check_input(report: Report, config) -> tuple[int, int] | None:
    """Read the input as ``mpiswarm run`` does; (rows, prompt bytes), None when it is invalid."""
    try:
        prompts = read_prompts(config.input, template=config.prompts.template, prompt_format=config.prompts.prompt_format)
    except InputError as exc:
        report.error(f"input: {exc}")
        return None
    size = sum(len(p.encode("utf-8")) for p in prompts.prompts)
    report.ok(f"input {config.input}: {len(prompts):,} prompts, valid")
    return len(prompts), size


def expected_bytes(n_rows: int, prompt_bytes: int, max_tokens: int, n: int) -> int:
    """An upper estimate of the result file and its checkpoints together (both exist at the end
    of a run): every answer at ``max_tokens`` tokens of :data:`BYTES_PER_TOKEN` bytes."""
    answers = n_rows * n * max_tokens * BYTES_PER_TOKEN
    return 2 * (prompt_bytes + answers + n_rows * ROW_OVERHEAD_BYTES)


def _under(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _writable(directory: str) -> str | None:
    """None when a file can be created in ``directory``, else why not."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mpiswarm-preflight-", dir=directory)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(name)
    return None


def check_directory(report: Report, label: str, path: str, need_bytes: int | None = None) -> None:
    """A directory the job writes to (``path`` itself for ``label`` log, its parent for the
    output): exists, writable, room for ``need_bytes``, not under ``$HOME``."""
    directory = path if label == "log directory" else os.path.dirname(os.path.abspath(path))
    if label == "log directory" and not os.path.exists(directory):
        directory = os.path.dirname(os.path.abspath(directory))  # the job creates it
    if not os.path.isdir(directory):
        report.error(f"{label} {path}: directory {directory} does not exist")
        return
    why = _writable(directory)
    if why:
        report.error(f"{label} {path}: cannot write in {directory} ({why})")
        return
    home = os.environ.get("HOME")
    if home and _under(directory, home):
        report.warn(f"{label} {path}: under $HOME ({home}): {HOME_QUOTA_NOTE}")
    if need_bytes is not None:
        free = shutil.disk_usage(directory).free
        if free < need_bytes:
            report.error(f"{label} {path}: {free / 1e9:.2f} GB free in {directory}, the run may need about "
                         f"{need_bytes / 1e9:.2f} GB (every answer at --max-tokens, plus its checkpoints)")
            return
        report.ok(f"{label} {path}: writable, {free / 1e9:.1f} GB free (about {need_bytes / 1e9:.2f} GB needed)")
    else:
        report.ok(f"{label} {path}: writable")


# --- weights and lengths -------------------------------------------------------------------------

def hub_dir(hf_home: str) -> str:
    """Where Hugging Face keeps models for ``HF_HOME``: ``HF_HOME/hub``."""
    return os.path.join(hf_home, "hub")


def model_dir(model: str, hf_home: str) -> str:
    """The snapshot directory holding ``model`` (a path, or a repo id in ``HF_HOME``'s cache):
    ``refs/main``'s snapshot, else the newest. Raises FileNotFoundError naming what is missing."""
    if os.path.isdir(model):
        return model
    hub = hub_dir(hf_home)
    repo = os.path.join(hub, "models--" + model.replace("/", "--"))
    if not os.path.isdir(repo):
        if not os.path.isdir(hub) and any(n.startswith("models--") for n in _listdir(hf_home)):
            raise FileNotFoundError(f"HF_HOME={hf_home} is itself a hub directory (it holds models--*): set HF_HOME "
                                    f"to {os.path.dirname(hf_home.rstrip('/'))}, Hugging Face appends hub/ "
                                    "(ALCF Aurora vLLM guide: HF_HOME=/flare/datasets/model-weights)")
        raise FileNotFoundError(f"no {repo} (model {model} is not in the Hugging Face cache of HF_HOME={hf_home})")
    snapshots = os.path.join(repo, "snapshots")
    try:
        with open(os.path.join(repo, "refs", "main"), encoding="utf-8") as fh:
            main = os.path.join(snapshots, fh.read().strip())
        if os.path.isdir(main):
            return main
    except OSError:
        pass
    found = [os.path.join(snapshots, n) for n in _listdir(snapshots)]
    if not found:
        raise FileNotFoundError(f"no snapshot in {snapshots}")
    return max(found, key=os.path.getmtime)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def missing_files(directory: str) -> list[str]:
    """What vLLM needs to load the model from ``directory`` and is not there (or is a broken
    link into the cache's blobs): config, tokenizer, safetensors index and every shard in it."""
    def have(name: str) -> bool:  # follows the cache's symlinks: a broken one is missing
        return os.path.exists(os.path.join(directory, name))

    missing = [] if have("config.json") else ["config.json"]
    if not any(have(n) for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer (tokenizer.json or tokenizer.model)")
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return missing + [f"a readable model.safetensors.index.json ({type(exc).__name__})"]
        missing += [s for s in shards if not have(s)]
    elif not have("model.safetensors"):
        missing.append("model.safetensors.index.json (or model.safetensors)")
    return missing


def derived_max_len(config: dict) -> tuple[int | None, str]:
    """The longest sequence ``config.json`` allows, as vLLM derives it (the smallest of
    :data:`LENGTH_KEYS`, times a ``rope_scaling`` factor except for su/longrope/llama3 scaling,
    which already count it), and the key it came from."""
    sources = [config] + [config[k] for k in ("text_config",) if isinstance(config.get(k), dict)]
    found = [(int(src[k]), k) for src in sources for k in LENGTH_KEYS if isinstance(src.get(k), (int, float))]
    if not found:
        return None, ""
    length, key = min(found)
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict) and isinstance(scaling.get("factor"), (int, float)):
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("su", "longrope", "llama3"):
            if kind == "yarn" and isinstance(scaling.get("original_max_position_embeddings"), int):
                length = scaling["original_max_position_embeddings"]
            length = int(length * scaling["factor"])
            key += f" x rope_scaling.factor {scaling['factor']:g}"
    return length, key


def check_model(report: Report, model: str, hf_home: str, offline: bool, max_model_len: int | None,
                max_tokens) -> int | None:
    """Weights present (offline: an error if not), ``--max-model-len`` within the config,
    ``--max-tokens`` below the model's length. Returns the length the servers will have."""
    where = f"model {model}"
    try:
        directory = model_dir(model, hf_home)
        missing = missing_files(directory)
        text = f"{where}: missing {', '.join(missing)} in {directory}"
    except FileNotFoundError as exc:
        missing, text = [str(exc)], f"{where}: {exc}"
    if missing:
        if offline:
            report.error(text + " (HF_HUB_OFFLINE=1: the servers cannot download it)")
        else:
            report.warn(text + " (not offline: each server would download it; compute nodes reach the internet "
                        "only through ALCF's proxy, Getting Started on Aurora)")
        return max_model_len
    report.ok(f"{where}: config, tokenizer and weights in {directory}")
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError) as exc:
        report.error(f"{where}: cannot read {directory}/config.json ({type(exc).__name__})")
        return max_model_len
    limit, key = derived_max_len(config if isinstance(config, dict) else {})
    length = max_model_len or limit
    if max_model_len and limit and max_model_len > limit:
        report.error(f"--max-model-len {max_model_len}: more than the {limit} tokens {directory}/config.json allows "
                     f"({key}); vLLM refuses to start")
    elif max_model_len and limit:
        report.ok(f"--max-model-len {max_model_len} within the model's {limit} ({key})")
    if isinstance(max_tokens, int) and length and max_tokens >= length:
        report.error(f"--max-tokens {max_tokens}: not below the servers' max_model_len {length}: every prompt "
                     "would fail with HTTP 400")
    return length


# --- MPI -----------------------------------------------------------------------------------------

_PROBE = r"""
import mpi4py
mpi4py.rc.initialize = mpi4py.rc.finalize = False
from mpi4py import MPI
libs = sorted({l.split()[-1] for l in open('/proc/self/maps') if '/libmpi' in l})
print(repr((MPI.Get_library_version(), libs)))
"""


def mpi4py_library(python: str = sys.executable) -> tuple[str, list[str]]:
    """mpi4py's MPI library (its version text and the ``libmpi`` files it loaded), read by a
    child ``python`` that imports mpi4py.MPI without initialising MPI. Raises RuntimeError."""
    try:
        res = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run {python} ({exc})") from None
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"cannot import mpi4py.MPI: {last}")
    return ast.literal_eval(res.stdout.strip().splitlines()[-1])


def launcher_text(mpiexec: str) -> str:
    """What ``mpiexec --version`` and ``--help`` say (the launcher's identity)."""
    out = []
    for flag in ("--version", "--help"):
        try:
            res = subprocess.run([mpiexec, flag], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            out.append(res.stdout + res.stderr)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(out)


def _family(text: str) -> str:
    if re.search(r"Open MPI|OpenRTE|PRRTE|prterun", text):
        return "Open MPI"
    if re.search(r"MPICH|HYDRA|Hydra|PALS|Cray|Intel\(R\) MPI", text):
        return "MPICH"
    return ""


def _environment(path: str) -> str | None:
    """The Python environment (``sys.prefix`` or ``sys.base_prefix``) ``path`` lies in, if any."""
    for prefix in {sys.prefix, sys.base_prefix}:
        if _under(path, prefix):
            return os.path.realpath(prefix)
    return None


def mpi_mismatch(library: str, libs: list[str], mpiexec: str, launcher: str) -> str | None:
    """Why mpi4py's library and ``mpiexec`` do not belong together, None when they do. Two
    rules: the same MPI family (Open MPI vs MPICH-derived: MPICH, Aurora MPICH with Cray PALS,
    Intel MPI); and a library from a Python environment (the PyPI ``mpich`` wheel) runs under
    that environment's ``mpiexec`` only, a system library under a system ``mpiexec``."""
    lib_family, run_family = _family(library), _family(launcher)
    if lib_family and run_family and lib_family != run_family:
        return f"mpi4py uses {lib_family} but {mpiexec} is {run_family}'s launcher"
    lib_env = _environment(libs[0]) if libs else None
    run_env = _environment(shutil.which(mpiexec) or mpiexec)
    if libs and lib_env != run_env:
        lib_where = f"the Python environment {lib_env}" if lib_env else "the system"
        run_where = f"the Python environment {run_env}" if run_env else "the system"
        return (f"mpi4py loads {libs[0]} (from {lib_where}) but {mpiexec} comes from {run_where}: every rank would "
                "start as a singleton of size 1 (a silent hang or every prompt sent N times); on Aurora use the "
                "frameworks module's mpi4py, without the mpich extra")
    return None


def check_mpi(report: Report, mpiexec: str) -> None:
    """mpi4py and ``mpiexec`` from the same MPI (see :func:`mpi_mismatch`)."""
    found = shutil.which(mpiexec)
    if not found:
        report.error(f"mpiexec: no {mpiexec} on PATH (load the frameworks module, or give --mpiexec)")
        return
    try:
        library, libs = mpi4py_library()
    except RuntimeError as exc:
        report.error(f"mpi4py: {exc}")
        return
    why = mpi_mismatch(library, libs, found, launcher_text(found))
    if why:
        report.error(f"mpi4py/mpiexec: {why}")
        return
    first = library.strip().splitlines()[0] if library.strip() else "?"
    report.ok(f"mpi4py ({first}; {libs[0] if libs else 'libmpi'}) matches {found}")


# --- command line ----------------------------------------------------------------------------------

def add_parser(sub) -> None:
    """The ``preflight`` subcommand: ``run``'s arguments, and what only the job knows."""
    from .cli import _add_run_arguments, _positive_float, _positive_int

    p = sub.add_parser("preflight", help="check a job before submitting it (MPI-free, for the login node)",
                       description=__doc__.split("\n")[0])
    _add_run_arguments(p)
    g = p.add_argument_group("the job (what `mpiswarm run` does not know)")
    g.add_argument("--walltime", default=None, help="the job's walltime, HH:MM:SS or seconds (default: "
                   "PBS_WALLTIME, else --job-script's #PBS -l walltime)")
    g.add_argument("--job-script", default=None, help="a PBS script whose #PBS -l walltime= to use")
    g.add_argument("--load-time", type=_positive_float, default=None,
                   help="seconds the servers may take to load before mpiswarm starts (the job's health timeout)")
    g.add_argument("--hf-home", default=None, help="the servers' HF_HOME (default: $HF_HOME)")
    g.add_argument("--offline", action="store_true", default=None,
                   help="the servers run with HF_HUB_OFFLINE=1 (default: as HF_HUB_OFFLINE says)")
    g.add_argument("--max-model-len", type=_positive_int, default=None, help="the servers' --max-model-len")
    g.add_argument("--mpiexec", default="mpiexec", help="the mpiexec the job runs mpiswarm with (default mpiexec)")
    g.add_argument("--no-mpi-check", action="store_true", help="skip the mpi4py/mpiexec check")
    g.add_argument("--log-dir", default=None, help="the job's log directory (checked like the output's)")


def run_checks(args) -> Report:
    """Every check for parsed ``preflight`` arguments."""
    from .cli import config_from_args

    report = Report()
    try:
        config = config_from_args(args)
    except InputError as exc:
        report.error(str(exc))
        return report
    counted = check_input(report, config)
    hf_home = args.hf_home or os.environ.get("HF_HOME") or os.path.expanduser("~/.cache/huggingface")
    offline = args.offline if args.offline is not None else os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    max_tokens = config.prompts.sampling.get("max_tokens")
    length = check_model(report, config.client.model, hf_home, offline, args.max_model_len, max_tokens)
    need = None
    if counted:
        budget = max_tokens or config.prompts.max_tokens_cap or length or 256
        need = expected_bytes(counted[0], counted[1], budget, config.prompts.sampling.get("n") or 1)
    check_directory(report, "output", config.output.path, need)
    if args.log_dir:
        check_directory(report, "log directory", args.log_dir)
    try:
        walltime, source = job_walltime(args.walltime, args.job_script)
    except ValueError as exc:
        report.error(f"walltime: {exc}")
    else:
        check_time_limit(report, config.schedule.time_limit, walltime, source, args.load_time)
    if not args.no_mpi_check:
        check_mpi(report, args.mpiexec)
    return report


def main(args) -> int:
    """``mpiswarm preflight``: print the report; 2 if anything would doom the job, else 0."""
    from .exitcodes import EXIT_OK, EXIT_USAGE

    report = run_checks(args)
    sys.stdout.write(report.render())
    n = len(report.errors)
    verdict = f"{n} problem(s) would doom the job" if n else "nothing found that would doom the job"
    print(f"{PROG}: {verdict}", flush=True)
    return EXIT_USAGE if n else EXIT_OK
