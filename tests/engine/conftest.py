"""Fixtures of the real-engine tier: llama.cpp's ``llama-server`` with a tiny model.

Fixtures (all tests in ``tests/engine/`` are marked ``engine``):

``llama_server_bin`` (session)
    Path of ``llama-server``: ``$LLAMA_SERVER``, the cache, or a build from source
    (several minutes, once per machine; see ``mpiswarm.engines.llama_server``).  The build
    runs when collection finishes, before the first engine test, so that it does
    not count against a test's timeout.  Skips the tests that need it when CMake
    or a C/C++ compiler is missing; a failed build is an error of each of them.
``tiny_model`` (session)
    Path of the tiny random-weight GGUF model (``mpiswarm.engines.tiny_gguf``, seed 0).
``llama_endpoints`` (session)
    A :class:`ServerGroup` of 4 servers on 4 consecutive loopback ports, shared by
    the session.  Do not stop or reconfigure these; start your own for that.
``exact_endpoints`` (session)
    Like ``llama_endpoints``, with flash attention off, so that an answer does not
    depend on the batch it was decoded in: use it to compare answers of lists with
    answers of single prompts.  Read-only too.
``llama_servers`` (function)
    A factory ``llama_servers(count=4, **options) -> ServerGroup`` that starts
    servers on ``count`` consecutive free ports; all are stopped after the test.
    Use it for tests that kill a server, or need other options (slots, context).

A :class:`~tests.engine.servers.ServerGroup` gives ``base_port``, ``ports``,
``base_urls`` (``http://127.0.0.1:P/v1``) and ``endpoint_template``
(``http://127.0.0.1:{port}/v1``), matching mpiswarm's
``--endpoint TEMPLATE --base-port P`` convention.  The server helpers
(``start_servers``, ``ServerGroup``, ``ServerFactory``, port blocks) live in the
importable module ``tests/engine/servers.py``; this file only wires them into
fixtures.

Servers listen on 127.0.0.1 only, log to a file in the test's temporary
directory, are ready (``/health`` 200) when returned, and are always stopped by
PID (SIGTERM, then SIGKILL after a bound), also when a test or the startup itself
fails.  As a last resort they are asked (Linux ``PR_SET_PDEATHSIG``) to get
SIGTERM if the pytest process dies without running its teardown; that signal
comes when the *thread* that started a server ends, so start servers from the
test's own thread (as the fixtures do), not from a short-lived helper thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from ..prepared import Prepared
from .servers import BATCH_INVARIANT_ARGS, ServerFactory, ServerGroup, start_servers

from mpiswarm.engines import llama_server, tiny_gguf


# --------------------------------------------------------------------------- fixtures


def _make_binary(log) -> tuple[str, str]:
    """Get the binary, with build progress on the terminal: ("ok", path), ("skip", why)
    or ("error", why)."""
    try:
        return "ok", str(llama_server.ensure_llama_server(log=log))
    except llama_server.MissingToolchainError as exc:
        return "skip", f"real-engine tier skipped: {exc}"
    except llama_server.LlamaServerBuildError as exc:
        return "error", str(exc)


# Every test here is marked ``engine``; llama-server is built before the first one, if any was selected.
_BINARY = Prepared("engine", _make_binary, Path(__file__).parent)
pytest_collection_modifyitems, pytest_collection_finish = _BINARY.hooks()


@pytest.fixture(scope="session")
def llama_server_bin(pytestconfig: pytest.Config) -> Path:
    """The llama-server binary; built and cached on first use (progress on the terminal)."""
    return _BINARY.path(pytestconfig)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight llama GGUF model (seed 0)."""
    return tiny_gguf.write_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def llama_endpoints(llama_server_bin: Path, tiny_model: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerGroup]:
    """Four shared servers on consecutive ports (4 slots of 512 tokens each, greedy)."""
    group = start_servers(llama_server_bin, tiny_model, tmp_path_factory.mktemp("llama-logs"))
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture(scope="session")
def exact_endpoints(llama_server_bin: Path, tiny_model: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerGroup]:
    """Four shared servers like ``llama_endpoints``, with flash attention off: an
    answer does not depend on the other prompts of its batch, so a prompt's answer
    in a list equals its answer sent alone (see ``BATCH_INVARIANT_ARGS``)."""
    group = start_servers(llama_server_bin, tiny_model, tmp_path_factory.mktemp("exact-logs"),
                          extra_args=BATCH_INVARIANT_ARGS)
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
def llama_servers(llama_server_bin: Path, tiny_model: Path,
                  tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory: ``llama_servers(count=4, **options)`` starts servers for this test only.

    Options: ``slots``, ``ctx``, ``seed``, ``threads``, ``extra_args`` (see
    :func:`~tests.engine.servers.server_argv`) and ``model`` (a GGUF path;
    default: ``tiny_model``).
    """
    factory = ServerFactory(llama_server_bin, tiny_model, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
