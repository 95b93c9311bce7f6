"""mpiswarm.engines without a real engine: what imports without the optional packages, the
package data, the shared server-process plumbing on a stand-in server, and the rule that
tools/ and the tests reach the engines through the package (no sys.path edits, no tools/)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mpiswarm.engines import TINY_CORPUS, TINY_HF_SCRIPT, TINY_LORA_SCRIPT, process
from mpiswarm.launch import is_running

REPO = Path(__file__).resolve().parents[2]

#: A stand-in server: /health answers 200 after ``delay`` s; it starts a child of its own that
#: sleeps (as vLLM's engine core is a child of its server), whose PID it prints to its log.
STAND_IN = textwrap.dedent("""
    import http.server, subprocess, sys, time
    delay = float(sys.argv[2])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("child", child.pid, flush=True)
    started = time.monotonic()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if time.monotonic() - started >= delay else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
""")


def test_the_package_and_its_engines_import_without_the_optional_packages():
    """``import mpiswarm`` never imports the engines; and they import without gguf, torch,
    transformers (only building a model needs them)."""
    code = textwrap.dedent("""
        import sys
        for name in ("gguf", "torch", "transformers", "tokenizers", "safetensors"):
            sys.modules[name] = None  # importing it now raises ImportError
        import mpiswarm
        assert not any(m.startswith("mpiswarm.engines") for m in sys.modules), sorted(sys.modules)
        from mpiswarm.engines import cache, llama_server, process, tiny_gguf, tiny_hf, tiny_lora, vllm_server
        assert tiny_gguf.CONTEXT_LENGTH == 512 and tiny_lora.BIAS_CHANNEL == tiny_hf.BIAS_CHANNEL
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_package_data_and_the_scripts_run_as_files():
    assert TINY_CORPUS.is_file() and TINY_CORPUS.read_text(encoding="utf-8").strip()
    assert TINY_HF_SCRIPT.is_file() and TINY_LORA_SCRIPT.is_file()
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^mpiswarm = \[.*"engines/\*\.txt"', pyproject, re.M), "tiny_corpus.txt not package data"
    # the vLLM environment's Python runs them as files, without this package
    for script in (TINY_HF_SCRIPT, TINY_LORA_SCRIPT):
        text = script.read_text(encoding="utf-8")
        assert "import mpiswarm" not in text and "from mpiswarm" not in text, script


def test_tools_and_tests_reach_the_engines_through_the_package():
    """No ``sys.path`` edits in tools/ or tests/, and no test imports a script of tools/."""
    offenders = []
    for path in [*(REPO / "tools").glob("*.py"), *(REPO / "tests").rglob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(r"sys\.path\s*(\.|\[|\+?=)", text):
            offenders.append(f"{path.relative_to(REPO)}: edits sys.path")
        if path.parts[-2] != "tools" and re.search(r"^\s*(from|import)\s+tools\b", text, re.M):
            offenders.append(f"{path.relative_to(REPO)}: imports tools/")
    assert not offenders


def test_free_port_block_is_free():
    base = process.find_free_port_block(3)
    assert all(process.port_is_free(base + k) for k in range(3))
    assert process.port_is_free(process.free_port())


def start_stand_in(tmp_path: Path, delay: float) -> process.ServerProcess:
    port = process.free_port()
    argv = [sys.executable, "-c", STAND_IN, str(port), str(delay)]
    return process.ServerProcess(port, process.spawn(argv, tmp_path / "server.log"), tmp_path / "server.log",
                                 tuple(argv))


def child_pid(server: process.ServerProcess) -> int:
    """The PID the stand-in printed (it prints it before it serves)."""
    match = re.search(r"^child (\d+)$", server.log_text(), re.M)
    assert match, server.log_text()
    return int(match.group(1))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
def test_a_server_waits_healthy_in_a_session_of_its_own_and_stops_with_its_children(tmp_path: Path):
    server = start_stand_in(tmp_path, delay=0.5)
    try:
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)  # its own process group
        assert process.wait_healthy([server], timeout=30) >= 0.4
        child = child_pid(server)
        assert is_running(child) and os.getpgid(child) == server.pid
    finally:
        status = server.stop(timeout=5)
    assert status != 0 and not server.is_running()
    deadline = time.monotonic() + 5
    while is_running(child) and time.monotonic() < deadline:  # the group's SIGTERM reaches it too
        time.sleep(0.05)  # polling another process's end: nothing to wait on
    assert not is_running(child)


def test_a_server_that_exits_while_starting_is_named_with_its_log(tmp_path: Path):
    argv = [sys.executable, "-c", "import sys; print('no such model', flush=True); sys.exit(3)"]
    server = process.ServerProcess(process.free_port(), process.spawn(argv, tmp_path / "x.log"),
                                   tmp_path / "x.log", tuple(argv))
    with pytest.raises(process.ServerStartupError, match=r"server on port \d+ \(pid \d+\) exited with "
                                                         r"status 3 while starting; log .*x\.log:\nno such model"):
        process.wait_healthy([server], timeout=30)
    server.stop()


def test_a_server_not_healthy_in_time(tmp_path: Path):
    server = start_stand_in(tmp_path, delay=600)
    try:
        with pytest.raises(process.ServerStartupError, match="was not healthy within 1 s") as info:
            server.wait_healthy(timeout=1)
        assert info.value.server is server
    finally:
        server.stop(timeout=5)
