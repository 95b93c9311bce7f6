"""The short report rank 0 prints at the end of a run (pure formatting)."""
from __future__ import annotations

from collections import Counter

from .records import RankStats, ResultColumns

PHASES = ("read", "health", "scatter", "requests", "gather", "write", "total")


def commonest_errors(errors, limit: int = 3) -> list[tuple[str, int]]:
    """The ``limit`` most frequent non-empty error messages with their counts."""
    return Counter(e for e in errors if e).most_common(limit)


def format_summary(results: ResultColumns, stats: list[RankStats], times: dict, output: str) -> str:
    n = len(results)
    n_ok = int(results.ok.sum())
    calls = sum(s.n_calls for s in stats)
    failed_calls = sum(s.n_failed_calls for s in stats)
    generated = sum(s.completion_tokens for s in stats)
    busy = times.get("requests", 0.0) or float("nan")
    lines = [
        f"mpiswarm: {n} prompts on {len(stats)} ranks: {n_ok} ok, {n - n_ok} failed; "
        f"{calls} calls ({failed_calls} failed)",
        f"  rate      {n / busy:,.1f} prompts/s, {generated / busy:,.1f} generated tokens/s "
        f"({generated:,} tokens)",
        "  phases    " + " | ".join(f"{p} {times[p]:.2f} s" for p in PHASES if p in times),
    ]
    for message, count in commonest_errors(results.error):
        lines.append(f"  error     {count} x {message}")
    lines.append(f"  output    {output}")
    return "\n".join(lines)
