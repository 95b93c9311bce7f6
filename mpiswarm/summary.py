"""The short report rank 0 prints at the end of a run (pure formatting)."""
from __future__ import annotations

from collections import Counter

from .packed import PackedColumns
from .records import RankStats

#: the phases of a run, in order, as the result file's ``time_<phase>_s`` attributes name them
PHASES = ("read", "health", "scatter", "requests", "gather", "write", "reduce", "total")


def balance(values) -> dict:
    """min, mean and max of a per-rank quantity, the ranks holding the min and max, and the
    imbalance max/mean (1.0 = perfectly even; None when the mean is 0)."""
    values = [float(v) for v in values]
    if not values:
        return {"min": None, "mean": None, "max": None, "argmin": None, "argmax": None, "max_over_mean": None}
    mean = sum(values) / len(values)
    hi = max(range(len(values)), key=values.__getitem__)
    lo = min(range(len(values)), key=values.__getitem__)
    return {"min": values[lo], "mean": mean, "max": values[hi], "argmin": lo, "argmax": hi,
            "max_over_mean": values[hi] / mean if mean > 0 else None}


class Tally:
    """What the summary needs of the rows, added up a round at a time."""

    def __init__(self):
        self.rows = self.ok = self.open = 0
        self.errors: Counter = Counter()

    def add(self, results: PackedColumns) -> None:
        self.rows += len(results)
        self.ok += int(results.ok.sum())
        self.open += int((~results.done).sum())
        self.errors.update(e for e in results.failed_errors() if e)

    @classmethod
    def merge(cls, tallies: list["Tally"]) -> "Tally":
        """The sum of ``tallies`` (every rank's rows, in a virtual layout)."""
        total = cls()
        for t in tallies:
            total.rows, total.ok, total.open = total.rows + t.rows, total.ok + t.ok, total.open + t.open
            total.errors.update(t.errors)
        return total


def format_summary(tally: Tally, stats: list[RankStats], times: dict, output: str, *,
                   resumed: int = 0, stopped: str | None = None) -> str:
    n, n_ok, n_open = tally.rows, tally.ok, tally.open
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
    for message, count in tally.errors.most_common(3):
        lines.append(f"  error     {count} x {message}")
    if n_open:
        lines.append(f"  stopped   {stopped or 'every endpoint is down'}: {n_open} prompts not answered; "
                     "run the same command again to resume")
    lines.append(f"  output    {output}")
    return "\n".join(lines)


def format_reduction(reduction) -> str:
    """The tree reduction's shape, what it left out, and the final answer (a
    :class:`~mpiswarm.reduce.Reduction`)."""
    sizes = reduction.sizes()
    failed = sum(int((~lv.results.ok).sum()) for lv in reduction.levels)
    shortened = sum(int(lv.shortened.sum()) for lv in reduction.levels)
    shape = " -> ".join(str(k) for k in [reduction.n_answers, *sizes]) if sizes else "nothing to combine"
    lines = [f"mpiswarm: reduce {shape} (fan-in {reduction.options.fanin}); "
             f"{reduction.n_left_out()} failed inputs left out, {failed} groups failed, {shortened} shortened"]
    if not reduction.complete:
        lines.append("  stopped before the last level: run the same command again to finish it")
    elif reduction.final_ok:
        lines.append("final answer:")
        lines.append(reduction.final)
    else:
        lines.append(f"  no final answer: {reduction.final_error}")
    return "\n".join(lines)


def format_votes(votes, ensemble, limit: int = 10) -> str:
    """An ensemble's majority vote per prompt (the first ``limit`` prompts)."""
    lines = [f"mpiswarm: ensemble of {ensemble.repeat} x {ensemble.n_ranks} endpoints per prompt; majority votes:"]
    for p, vote in enumerate(votes[:limit]):
        failed = f", {vote.n_failed} failed" if vote.n_failed else ""
        lines.append(f"  prompt {p}: {vote.votes}/{vote.n_valid} ({vote.share:.0%}{failed}): {vote.answer!r}")
    if len(votes) > limit:
        lines.append(f"  … {len(votes) - limit} more in group ensemble of the output")
    return "\n".join(lines)
