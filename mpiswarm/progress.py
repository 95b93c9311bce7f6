"""Live progress on rank 0: a bar with rate and ETA on a terminal, a log line every few
seconds otherwise (PBS output files are not terminals). Pure formatting plus a small printer."""
from __future__ import annotations

import sys
import time

import numpy as np


def has_terminal() -> bool:
    """Whether a person is watching: stdout is a terminal, or the job has a controlling
    terminal (``mpiexec`` in an interactive shell pipes rank output, but the tty is there)."""
    if sys.stdout.isatty():
        return True
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_figures(done: int, total: int, elapsed: float, done_at_start: int = 0) -> tuple[float, float]:
    """(rows per second since the start, seconds left at that rate)."""
    rate = (done - done_at_start) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("inf")
    return rate, eta


def format_bar(done: int, failed: int, total: int, rate: float, eta: float, width: int = 30) -> str:
    frac = done / total if total else 1.0
    filled = int(round(frac * width))
    bar = "#" * filled + "." * (width - filled)
    tail = f" | {failed:,} failed" if failed else ""
    return f"[{bar}] {frac:6.1%} {done:,}/{total:,} | {rate:,.1f} prompts/s | ETA {format_duration(eta)}{tail}"


def format_line(done: int, failed: int, total: int, rate: float, eta: float, elapsed: float) -> str:
    frac = done / total if total else 1.0
    return (f"mpiswarm: {done:,}/{total:,} prompts ({frac:.1%}) after {format_duration(elapsed)}, "
            f"{rate:,.1f} prompts/s, ETA {format_duration(eta)}, {failed:,} failed")


class ProgressPrinter:
    """Follows the per-rank counts of finished and answered rows and prints them."""

    def __init__(self, total: int, already_done: int = 0, *, mode: str = "auto", interval: float | None = None,
                 stream=None):
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "bar" if has_terminal() else "log"
        self.mode = mode
        self.interval = interval if interval is not None else (0.25 if mode == "bar" else 10.0)
        self.total = total
        self.already = already_done
        self.start = time.monotonic()
        self._last = self.start
        self._printed = False

    def update(self, counts: np.ndarray, force: bool = False) -> None:
        """``counts[r] = (rows finished, rows answered)`` of rank r in this attempt."""
        if self.mode == "none":
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        finished, answered = (int(x) for x in counts.sum(axis=0))
        done = self.already + finished
        elapsed = now - self.start
        rate, eta = progress_figures(done, self.total, elapsed, self.already)
        if self.mode == "bar":
            self.stream.write("\r" + format_bar(done, finished - answered, self.total, rate, eta))
        else:
            self.stream.write(format_line(done, finished - answered, self.total, rate, eta, elapsed) + "\n")
        self.stream.flush()
        self._printed = True

    def close(self, counts: np.ndarray) -> None:
        self.update(counts, force=True)
        if self.mode == "bar" and self._printed:
            self.stream.write("\n")
            self.stream.flush()
