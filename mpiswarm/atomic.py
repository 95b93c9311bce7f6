"""Files that appear whole or not at all: written beside their final path, then renamed."""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path in ``path``'s directory; on success rename it to ``path``, on any
    failure remove it. A reader of ``path`` never sees a partial file."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomically(path: str | os.PathLike, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
