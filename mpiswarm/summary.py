"""The short report rank 0 prints at the end of a run (pure formatting)."""
from __future__ import annotations

from collections import Counter

from .records import RankStats, ResultColumns

PHASES = ("read", "health", "scatter", "requests", "gather", "write", "total")


def commonest_errors(errors, limit: int = 3) -> list[tuple[str, int]]:
    """The ``limit`` most frequent non-empty error messages with their counts."""
    return Counter(e for e in errors if e).most_common(limit)


def format_summary(results: ResultColumns, stats: list[RankStats], times: dict, output: str, *,
                   resumed: int = 0, stopped: str | None = None) -> str:
    n = len(results)
    n_ok = int(results.ok.sum())
    n_open = int((~results.done).sum())
    calls = sum(s.n_calls for s in stats)
    failed_calls = sum(s.n_failed_calls for s in stats)
    retries = sum(s.n_retries for s in stats)
    failovers = sum(s.n_failovers for s in stats)
    generated = sum(s.completion_tokens for s in stats)
    busy = times.get("requests", 0.0) or float("nan")
    lines = [
        f"mpiswarm: {n} prompts on {len(stats)} ranks: {n_ok} ok, {n - n_ok - n_open} failed"
        + (f", {n_open} not answered yet" if n_open else "")
        + f"; {calls} calls ({failed_calls} failed, {retries} retries)",
        f"  rate      {n / busy:,.1f} prompts/s, {generated / busy:,.1f} generated tokens/s "
        f"({generated:,} tokens)",
        "  phases    " + " | ".join(f"{p} {times[p]:.2f} s" for p in PHASES if p in times),
    ]
    if resumed:
        lines.append(f"  resumed   {resumed} prompts were answered by earlier attempts")
    dead = sorted({url for s in stats for url in s.extra.get("dead_endpoints", {})})
    if dead:
        lines.append(f"  down      {len(dead)} endpoint(s) declared dead, {failovers} failover(s): {', '.join(dead)}")
    for message, count in commonest_errors(results.error[i] for i in range(n) if results.done[i]):
        lines.append(f"  error     {count} x {message}")
    if n_open:
        lines.append(f"  stopped   {stopped or 'every endpoint is down'}: {n_open} prompts not answered; "
                     "run the same command again to resume")
    lines.append(f"  output    {output}")
    return "\n".join(lines)
