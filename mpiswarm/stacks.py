"""Where a process is stuck, on request: ``kill -USR2 PID`` (:data:`SIGNAL`).

Two answers, one after the other, and the process goes on:

1. the Python stack of every thread (:mod:`faulthandler`, written as the signal is delivered,
   so also while the main thread is inside an MPI call or a blocking read);
2. every task of the asyncio event loop the main thread runs, each with the chain of ``await``
   it is suspended in and what it waits for at the end. That is what says why a rank whose
   thread stack ends in ``select`` does not move on: one HTTP reply, a chunk from rank 0, a
   retry's delay. It is written by a Python-level handler, so only once the main thread runs
   Python again: a rank stuck inside MPI gives the first answer alone.

Both go to stderr. With ``$MPISWARM_STACKS_DIR`` set (the test and benchmark harnesses set
it) they go to ``DIR/PID.threads`` and ``DIR/PID.tasks`` instead, the latter written last and
whole: the harness knows when a process has answered, and reads its stacks without racing the
MPI launcher's forwarding of stderr (see :func:`mpiswarm.launch.dump_stacks`).
"""
from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys

#: not SIGUSR1: MPICH's MPID_Init takes that over ("signal handler for process failure
#: notifications from hydra", src/mpid/ch4/src/ch4_init.h) and calls what was there before from
#: its own handler, so the answer came twice and MPICH counted a failure that did not happen
SIGNAL = signal.SIGUSR2
#: where :func:`install` writes a process's stacks, when set
DIR_VARIABLE = "MPISWARM_STACKS_DIR"

_threads_file = None  # kept open for faulthandler, which writes to its descriptor
_directory: str | None = None  # where the answers go (None: stderr), decided by install()
_label = "this process"


def install(label: str) -> None:
    """Answer :data:`SIGNAL` with this process's thread stacks and asyncio tasks (see the module
    docstring); ``label`` names the process in the answer (``mpiswarm rank 3``). Call it in the
    main thread, before any event loop runs."""
    global _threads_file, _directory, _label
    _label = label
    directory = os.environ.get(DIR_VARIABLE)
    if directory and _threads_file is None:
        try:
            _threads_file = open(os.path.join(directory, f"{os.getpid()}.threads"), "w")
            _directory = directory
        except OSError:
            pass  # a harness's directory gone: answer on stderr instead
    try:
        signal.signal(SIGNAL, _write_tasks)
        # chain: after the stacks, the Python-level handler above runs (in the main thread)
        faulthandler.register(SIGNAL, file=_threads_file or sys.stderr, all_threads=True, chain=True)
    except (AttributeError, OSError, RuntimeError, ValueError):
        pass  # no usable stderr, or not the main thread: a diagnostic, never a reason to fail


def await_chain(task: asyncio.Task) -> tuple[list[str], str | None]:
    """Where ``task`` is suspended: ``file:line in function`` of each coroutine in its chain of
    ``await`` (outermost first), and the future it waits for (its repr), if any."""
    frames: list[str] = []
    awaited = task.get_coro()
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None) \
            or getattr(awaited, "ag_frame", None)
        if frame is None:  # not a coroutine (a future, say), or one that has finished
            break
        code = frame.f_code
        frames.append(f"{code.co_filename}:{frame.f_lineno} in {getattr(code, 'co_qualname', code.co_name)}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None) \
            or getattr(awaited, "ag_await", None)
    # what the task's step is parked on (CPython's tasks, both implementations, keep it here;
    # the chain's end may be an opaque iterator over it)
    waiter = getattr(task, "_fut_waiter", None)
    return frames, None if waiter is None else _short(repr(waiter))


def describe_tasks(tasks) -> str:
    """Text for ``tasks``: each task, its state and its chain of ``await`` (:func:`await_chain`)."""
    lines = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        frames, waits_for = await_chain(task)
        state = "done" if task.done() else "pending"
        lines.append(f"task {task.get_name()} ({state}):")
        lines += [f"  {frame}" for frame in frames]
        if waits_for:
            lines.append(f"  waiting for {waits_for}")
    return "\n".join(lines) + "\n"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_tasks(signum, frame) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        body = "no asyncio event loop is running (the thread stacks say where the main thread is)\n"
    else:
        tasks = asyncio.all_tasks(loop)
        body = f"{len(tasks)} task(s)\n" + describe_tasks(tasks)
    text = f"asyncio tasks of {_label} (pid {os.getpid()}): {body}end of the tasks of pid {os.getpid()}\n"
    if _directory is not None:
        path = os.path.join(_directory, f"{os.getpid()}.tasks")
        try:
            with open(f"{path}.tmp", "w") as fh:
                fh.write(text)
            os.replace(f"{path}.tmp", path)  # whole or absent: the harness waits for it
            return
        except OSError:
            pass
    data = text.encode("utf-8", "replace")
    while data:  # a pipe may take it in pieces
        data = data[os.write(sys.stderr.fileno(), data):]
