"""How rows are split across ranks and into HTTP calls (pure functions, no MPI)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def contiguous_bounds(n_items: int, n_parts: int) -> np.ndarray:
    """Offsets (length ``n_parts + 1``) of ``n_parts`` contiguous slices of ``n_items``.

    Sizes differ by at most one; the first ``n_items % n_parts`` slices are the longer ones.
    Slice *r* is ``[bounds[r], bounds[r + 1])``; slices may be empty.
    """
    if n_parts < 1:
        raise ValueError("n_parts must be >= 1")
    base, extra = divmod(n_items, n_parts)
    sizes = np.full(n_parts, base, dtype=np.int64)
    sizes[:extra] += 1
    bounds = np.zeros(n_parts + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    return bounds


@dataclass(frozen=True)
class CallPlan:
    """One HTTP call: the local rows it carries and their shared sampling overrides."""

    rows: range | list[int]
    overrides: str  # canonical JSON, '' for none

    def __len__(self) -> int:
        return len(self.rows)


def _split(rows, batch_size):
    if batch_size is None or len(rows) <= batch_size:
        return [rows]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def plan_calls(overrides: list[str], batch_size: int | None = None) -> list[CallPlan]:
    """Group local rows into calls: rows sharing their sampling overrides share a call.

    Groups keep the order of their first row; each group is cut into calls of at most
    ``batch_size`` rows (``None``: the whole group in one call). Rows with no overrides are
    the common case and stay contiguous ``range`` objects.
    """
    n = len(overrides)
    if n == 0:
        return []
    groups: dict[str, list[int]] = {}
    if not any(overrides):
        groups[""] = range(n)
    else:
        for row, key in enumerate(overrides):
            groups.setdefault(key, []).append(row)
    return [CallPlan(chunk, key) for key, rows in groups.items() for chunk in _split(rows, batch_size)]
