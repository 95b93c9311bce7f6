"""Text outputs of the result-file tools: files written atomically, or standard output."""
from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager

from .atomic import atomic_path

STDOUT = "-"


@contextmanager
def atomic_text(path: str):
    """A text file (UTF-8, newlines untranslated) at a temporary name beside ``path``, renamed
    into place when the block succeeds and removed when it fails; ``-`` is standard output."""
    if path == STDOUT:
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            yield fh


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``-``: standard output)."""
    with atomic_text(path) as fh:
        fh.write(text)


def check_directory(path: str) -> str | None:
    """Why ``path`` cannot be written (its directory is missing), or None."""
    if path == STDOUT:
        return None
    directory = os.path.dirname(os.path.abspath(path))
    return None if os.path.isdir(directory) else f"{path}: directory {directory} does not exist"


def quiet_broken_pipe(main):
    """Wrap a command's ``main`` so a closed standard output (``… | head``) ends it quietly."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail
            return 0
    return wrapper
