#!/usr/bin/env python3
"""Build (once) and locate llama.cpp's ``llama-server`` for mpiswarm's real-engine tests.

Resolution order of :func:`ensure_llama_server`:

1. ``$LLAMA_SERVER``: if set, it must name an executable file, which is used as is
   (no build).  A set but unusable value is an error, never silently ignored.
2. The cache: ``${MPISWARM_CACHE:-~/.cache/mpiswarm}/llama-server-<version>/llama-server``.
3. A build from source: the pinned ``llama-cpp-python`` sdist (which vendors
   llama.cpp) is fetched with pip into a temporary directory, its sha256 checked,
   extracted, configured with CMake and only the ``llama-server`` target is built
   (Release, static libraries, no web-UI download, no OpenSSL).  The binary is
   smoke-tested (``--version``) and then installed into the cache atomically:
   copied to a temporary name in the cache directory and renamed over the final
   name, so a failed or interrupted build never leaves a half-written binary.

Concurrent callers are serialised with an exclusive ``fcntl.flock`` on a lock file
in the cache directory; whoever gets the lock second finds the finished binary.
The full output of every build step goes to ``build.log`` in the cache directory.

The binary is built for the CPU it is built on (llama.cpp's default
``GGML_NATIVE=ON``).  On a cluster whose nodes have different CPUs, point
``MPISWARM_CACHE`` at a node-local or per-architecture directory.

Command line::

    python tools/llama_server.py [--print-path] [--jobs N]

``--print-path`` prints only the binary's path on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Sequence

from mpiswarm.engines.cache import BuildLog, Log, cache_root, exclusive_lock, stamp

#: The pinned llama-cpp-python release whose sdist vendors llama.cpp.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: sha256 of ``llama_cpp_python-<version>.tar.gz`` as published on PyPI.
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
#: Path of llama.cpp inside the extracted sdist.
VENDORED_LLAMA_CPP = Path("vendor") / "llama.cpp"

#: CMake cache options.  Names checked against this version's CMakeLists:
#: LLAMA_CURL no longer exists there (it is deprecated and ignored), the web UI
#: is governed by LLAMA_BUILD_UI (npm) and LLAMA_USE_PREBUILT_UI (download).
CMAKE_OPTIONS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
)
BUILD_TARGET = "llama-server"
BINARY_NAME = "llama-server"
BUILD_LOG = "build.log"


class LlamaServerBuildError(RuntimeError):
    """Getting a usable llama-server failed; the message is one line saying why."""


class MissingToolchainError(LlamaServerBuildError):
    """A tool needed to build llama-server (CMake, a C or C++ compiler) is absent."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            "cannot build llama-server: missing " + ", ".join(self.missing)
            + " (install them, or set LLAMA_SERVER to an existing llama-server binary)"
        )


def install_dir() -> Path:
    """The directory that holds the cached binary of the pinned version."""
    return cache_root() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"


def cached_binary_path() -> Path:
    """Where the cached binary of the pinned version lives (it may not exist yet)."""
    return install_dir() / BINARY_NAME


def default_jobs() -> int:
    """The number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def missing_build_tools() -> list[str]:
    """Names of the build prerequisites that cannot be found (empty when all are there)."""
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake")
    if not _compiler_available("CC", ("cc", "gcc", "clang")):
        missing.append("a C compiler (cc/gcc/clang)")
    if not _compiler_available("CXX", ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++/g++/clang++)")
    return missing


def _compiler_available(env_var: str, candidates: Sequence[str]) -> bool:
    configured = os.environ.get(env_var)
    if configured:
        # CMake takes the first word of $CC/$CXX as the compiler.
        return shutil.which(configured.split()[0]) is not None
    return any(shutil.which(name) for name in candidates)


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure_llama_server(log: Log = print, jobs: int | None = None) -> Path:
    """Return the path of a usable ``llama-server``, building and caching it if needed.

    ``log`` receives one human-readable progress line per call.  Raises
    :class:`MissingToolchainError` when a build is needed but CMake or a compiler is
    absent, and :class:`LlamaServerBuildError` when any build step fails.
    """
    override = os.environ.get("LLAMA_SERVER")
    if override:
        path = Path(override).expanduser()
        if not _is_executable_file(path):
            raise LlamaServerBuildError(f"LLAMA_SERVER={override!r} is not an executable file")
        return path.resolve()

    target = cached_binary_path()
    if _is_executable_file(target):
        return target

    missing = missing_build_tools()
    if missing:
        raise MissingToolchainError(missing)

    lock_path = target.parent / ".build.lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(lock_path, "a+b")
    except OSError as exc:
        raise LlamaServerBuildError(
            f"cannot use the cache directory {target.parent}: {exc}") from exc
    waiting = _stamp(f"another process is building llama-server; waiting for {lock_path}")
    with lock_file, exclusive_lock(lock_file, log, waiting):
        # Another process may have finished the build while we waited for the lock.
        if _is_executable_file(target):
            log(_stamp(f"llama-server was built by another process: {target}"))
            return target
        try:
            _build_and_install(target, jobs or default_jobs(), log)
        except OSError as exc:  # e.g. no space for the temporary build directory
            raise LlamaServerBuildError(f"llama-server build failed: {exc}; "
                                        f"full log: {target.parent / BUILD_LOG}") from exc
    return target


def _stamp(message: str) -> str:
    return stamp("llama-server", message)


def _build_and_install(target: Path, jobs: int, log: Log) -> None:
    log_path = target.parent / BUILD_LOG
    log_path.write_text(
        f"llama-server build: llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, "
        f"target {target}, jobs {jobs}\n", encoding="utf-8")
    builder = BuildLog(log_path, log, "llama-server", "llama-server build", LlamaServerBuildError)
    started = time.monotonic()
    builder.note(f"building llama-server from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} "
                 f"with {jobs} job(s); this takes several minutes; log: {log_path}")

    with tempfile.TemporaryDirectory(prefix="mpiswarm-llama-build-") as tmp:
        work = Path(tmp)
        sdist = _download_sdist(builder, work / "download")
        source = _extract(builder, sdist, work / "src")
        build_dir = work / "build"
        builder.run("configure", ["cmake", "-S", str(source), "-B", str(build_dir),
                                  *CMAKE_OPTIONS])
        builder.run("build", ["cmake", "--build", str(build_dir), "--target", BUILD_TARGET,
                              "--config", "Release", "--parallel", str(jobs)])
        built = build_dir / "bin" / BINARY_NAME
        if not _is_executable_file(built):
            raise builder.fail("build", f"the build did not produce {built}")
        builder.run("smoke test", [str(built), "--version"])
        _install_atomically(builder, built, target)

    builder.note(f"installed {target} (total {time.monotonic() - started:.0f} s)")


def _download_sdist(builder: BuildLog, dest: Path) -> Path:
    dest.mkdir()
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    builder.run("download", [sys.executable, "-m", "pip", "download", "--no-deps",
                             "--no-binary", ":all:", "--disable-pip-version-check",
                             requirement, "-d", str(dest)])
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if len(found) != 1:
        raise builder.fail("download", f"expected one llama_cpp_python sdist in {dest}, "
                                       f"found {[p.name for p in found]}")
    digest = hashlib.sha256()
    with open(found[0], "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != SDIST_SHA256:
        raise builder.fail("download", f"sha256 of {found[0].name} is {digest.hexdigest()}, "
                                       f"expected {SDIST_SHA256}")
    return found[0]


def _extract(builder: BuildLog, sdist: Path, dest: Path) -> Path:
    builder.note(f"extract: {sdist.name}")
    dest.mkdir()
    try:
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # refuses absolute paths, links out, devices
                archive.extractall(dest, filter="data")
            else:
                archive.extractall(dest)  # noqa: S202 - the sdist's sha256 was checked
    except (tarfile.TarError, OSError) as exc:
        raise builder.fail("extract", str(exc)) from exc
    roots = [p for p in dest.iterdir() if p.is_dir()]
    source = roots[0] / VENDORED_LLAMA_CPP if len(roots) == 1 else None
    if source is None or not (source / "CMakeLists.txt").is_file():
        raise builder.fail("extract", f"no {VENDORED_LLAMA_CPP}/CMakeLists.txt in {sdist.name}")
    return source


def _install_atomically(builder: BuildLog, built: Path, target: Path) -> None:
    builder.note(f"install: {target}")
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(built, staging)
        os.chmod(staging, 0o755)
        with open(staging, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staging, target)
    except OSError as exc:
        raise builder.fail("install", str(exc)) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build (once, cached) and locate llama.cpp's llama-server.")
    parser.add_argument("--print-path", action="store_true",
                        help="print only the binary's path on stdout (progress goes to stderr)")
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help=f"parallel compile jobs (default: the usable cores, {default_jobs()})")
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be at least 1")

    def to_stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind: stop the running step, remove temporary files

    signal.signal(signal.SIGTERM, terminate)

    try:
        path = ensure_llama_server(log=to_stderr, jobs=args.jobs)
    except LlamaServerBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was installed", file=sys.stderr)
        return 130
    if args.print_path:
        print(path)
    else:
        to_stderr(_stamp(f"ready: {path}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
