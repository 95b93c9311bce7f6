"""``kill -USR2``: a process's thread stacks and its asyncio tasks, each task with the chain of
``await`` it is suspended in (mpiswarm.stacks), to a harness's directory or to stderr.

The child is idle in the event loop (``epoll_wait`` with no timeout), as a rank waiting for one
HTTP reply is: its thread stack ends in ``select`` and only the tasks say what it waits for."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpiswarm.stacks import DIR_VARIABLE, SIGNAL

from ..conftest import REPO

CHILD = r"""
import asyncio, faulthandler, functools
from mpiswarm import stacks
faulthandler.dump_traceback_later(60, exit=True)  # bounds a test that reads its stderr
stacks.install("test child")

async def waits_for_a_reply(event):
    # "ready" once the whole chain is suspended (a callback runs after the task yields)
    asyncio.get_running_loop().call_soon(functools.partial(print, "ready", flush=True))
    await event.wait()

async def sends_a_call(event):
    await waits_for_a_reply(event)

async def main():
    event = asyncio.Event()
    await asyncio.create_task(sends_a_call(event), name="the-call")

asyncio.run(main())
"""


def start_child(env_extra: dict) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != DIR_VARIABLE}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    assert child.stdout.readline() == "ready\n", child.stderr.read()
    return child


@pytest.fixture
def children():
    started = []
    yield started
    for child in started:
        child.kill()
        child.communicate()


def read_until_the_end_of_the_tasks(child: subprocess.Popen) -> str:
    """The child's stderr up to the tasks' last line (or its exit: it ends itself after 60 s)."""
    text = ""
    for line in child.stderr:
        text += line
        if line.startswith("end of the tasks of pid"):
            break
    return text


def assert_the_tasks_say_what_it_waits_for(text: str) -> None:
    assert "asyncio tasks of test child (pid " in text, text
    assert "task the-call (pending):" in text, text
    chain = text[text.index("task the-call"):]
    assert chain.index("in sends_a_call") < chain.index("in waits_for_a_reply") < chain.index("in Event.wait"), text
    assert "waiting for <Future pending" in chain, text


def test_the_stacks_go_to_the_harness_directory_and_the_process_goes_on(tmp_path, children):
    child = start_child({DIR_VARIABLE: str(tmp_path)})
    children.append(child)
    os.kill(child.pid, SIGNAL)
    tasks = tmp_path / f"{child.pid}.tasks"
    deadline = time.monotonic() + 20
    while not tasks.exists():  # written last and whole: the process's answer
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    assert_the_tasks_say_what_it_waits_for(tasks.read_text())
    threads = (tmp_path / f"{child.pid}.threads").read_text()
    assert "most recent call first" in threads and "in run_forever" in threads, threads
    assert child.poll() is None  # it goes on: a second request answers too
    tasks.unlink()
    os.kill(child.pid, SIGNAL)
    while not tasks.exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    assert_the_tasks_say_what_it_waits_for(tasks.read_text())


def test_without_a_directory_the_stacks_go_to_stderr(children):
    child = start_child({})
    children.append(child)
    os.kill(child.pid, SIGNAL)
    text = read_until_the_end_of_the_tasks(child)
    assert "most recent call first" in text, text
    assert_the_tasks_say_what_it_waits_for(text)
    assert child.poll() is None


def test_a_missing_directory_falls_back_to_stderr(tmp_path, children):
    child = start_child({DIR_VARIABLE: str(tmp_path / "gone")})
    children.append(child)
    os.kill(child.pid, SIGNAL)
    text = read_until_the_end_of_the_tasks(child)
    assert_the_tasks_say_what_it_waits_for(text)
    assert not Path(tmp_path / "gone").exists()
