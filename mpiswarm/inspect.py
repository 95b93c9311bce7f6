"""``mpiswarm inspect OUT.h5``: what a result file holds, as a readable report or JSON.

Prompts ok / failed / not answered, whether the file is complete, the commonest errors,
finish reasons, tokens, the phase times, throughput, every rank's work and how evenly it
was spread, and the run's model and options. The rows are read a block at a time
(:func:`mpiswarm.store.iter_rows`), so a file of any size is inspected in bounded memory.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter

from .summary import PHASES, balance
from .store import ResultFileError, is_unanswered, iter_rows, read_info, read_reduction
from .textout import quiet_broken_pipe

#: Per-rank quantities whose spread over the ranks the report shows.
BALANCE_FIELDS = ("n_prompts", "n_calls", "n_retries", "n_failovers", "t_requests")
#: The per-rank table is printed in full up to this many ranks (``--ranks`` prints it always).
RANK_TABLE_LIMIT = 16


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def count_rows(path, chunk_rows: int | None = None) -> dict:
    """Stream the ``ok``, ``error``, ``error_kind`` and ``finish_reason`` columns: row counts
    (unanswered: a stopped job's, by kind), every distinct error with its count, and the
    finish reasons of answered rows."""
    ok = failed = unanswered = 0
    errors: Counter = Counter()
    finish: Counter = Counter()
    kwargs = {"chunk_rows": chunk_rows} if chunk_rows else {}
    for _, block in iter_rows(path, ("ok", "error", "error_kind", "finish_reason"), **kwargs):
        good = block["ok"]
        ok += int(good.sum())
        kinds = block["error_kind"][~good].tolist() if "error_kind" in block else ["other"] * int((~good).sum())
        for message, kind in zip(block["error"][~good].tolist(), kinds):
            if is_unanswered(kind):
                unanswered += 1
            else:
                failed += 1
            errors[message] += 1
        if "finish_reason" in block:
            finish.update(block["finish_reason"][good].ravel().tolist())
    return {"ok": ok, "failed": failed, "unanswered": unanswered, "errors": errors, "finish": finish}


def build_report(path, errors_shown: int = 5, chunk_rows: int | None = None) -> dict:
    """Everything ``inspect`` reports about the file at ``path``, as plain JSON-able data."""
    info = read_info(path)
    a, ranks = info.attrs, info.ranks
    counts = count_rows(path, chunk_rows)
    total = info.n_rows
    complete = bool(a.get("complete", counts["unanswered"] == 0))
    times = {p: _finite(info.time(p)) for p in PHASES if f"time_{p}_s" in a}
    prompt_tokens = int(sum(ranks.get("prompt_tokens", []))) if "prompt_tokens" in ranks else None
    completion_tokens = int(sum(ranks.get("completion_tokens", []))) if "completion_tokens" in ranks else None
    requests_s, total_s = times.get("requests"), times.get("total")

    def rate(amount, seconds):
        return amount / seconds if amount is not None and seconds else None

    per_rank = {}
    for name, values in ranks.items():
        per_rank[name] = [(_finite(float(v)) if isinstance(v, float) else v) for v in
                          (values.tolist() if hasattr(values, "tolist") else list(values))]
    n_ranks = int(a.get("n_ranks", len(per_rank.get("rank", []))))
    return {
        "file": info.path,
        "model": a.get("model"),
        "rows_per_model": rows_per_model(ranks),
        "mpiswarm_version": a.get("mpiswarm_version"),
        "created": a.get("created"),
        "attempt": a.get("attempt"),
        "n_resumed": a.get("n_resumed"),
        "n_ranks": n_ranks,
        "choices_per_prompt": info.n,
        "prompts": {"total": total, "ok": counts["ok"], "failed": counts["failed"],
                    "not_answered": counts["unanswered"]},
        "complete": complete,
        "resume": None if complete else "run the same command again to resume",
        "layout": a.get("layout", "single"),
        "parts": json.loads(a["parts"]) if isinstance(a.get("parts"), str) else [],
        "errors": [{"message": m, "count": c} for m, c in counts["errors"].most_common(errors_shown)],
        "distinct_errors": len(counts["errors"]),
        "finish_reasons": dict(counts["finish"].most_common()),
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens,
                   "total": None if prompt_tokens is None else prompt_tokens + (completion_tokens or 0)},
        "times_s": times,
        "throughput": {
            "prompts_per_s": rate(total - counts["unanswered"], requests_s),
            "completion_tokens_per_s": rate(completion_tokens, requests_s),
            "prompts_per_s_end_to_end": rate(total - counts["unanswered"], total_s),
        },
        "balance": {name: balance(ranks[name]) for name in BALANCE_FIELDS if name in ranks},
        "ranks": per_rank,
        "params": a.get("params"),
        "reduce": _reduce_summary(path),
    }


def _reduce_summary(path) -> dict | None:
    """The tree reduction's shape and final answer, None when the file holds none."""
    try:
        tree = read_reduction(path)
    except ResultFileError:
        return None
    return {"level_sizes": [len(level["text"]) for level in tree["levels"]],
            "groups_failed": sum(not ok for level in tree["levels"] for ok in level["ok"]),
            "inputs_left_out": sum(sum(level["n_left_out"]) for level in tree["levels"]),
            "shortened": sum(sum(level["shortened"]) for level in tree["levels"]),
            "complete": tree["complete"], "final_ok": tree["ok"], "final": tree["final"], "error": tree["error"]}


def _num(x, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def rows_per_model(ranks: dict) -> dict:
    """Rows by the model they were sent to (a row's own ``model``, else --model), over every
    rank (``ranks/extra``'s ``rows_per_model``)."""
    total: dict = {}
    for extra in ranks.get("extra", []):
        for model, count in ((extra or {}).get("rows_per_model") or {}).items():
            total[model] = total.get(model, 0) + count
    return total


def format_report(r: dict, all_ranks: bool = False) -> str:
    """The human-readable form of :func:`build_report`'s data."""
    p = r["prompts"]
    params = r["params"] or {}
    lines = [f"mpiswarm result file {r['file']}"]
    lines.append(f"  model        {r['model']} (api {params.get('api', '?')}), {r['n_ranks']} ranks, "
                 f"mpiswarm {r['mpiswarm_version']}, created {r['created']}")
    if len(r["rows_per_model"]) > 1 or set(r["rows_per_model"]) - {r["model"]}:
        lines.append("  models       " + ", ".join(f"{m} {_num(k)} rows" for m, k in r["rows_per_model"].items()))
    attempt = r["attempt"]
    if attempt:
        lines.append(f"  attempt      {attempt} (resumed; {_num(r['n_resumed'])} prompts answered by earlier attempts)")
    else:
        lines.append("  attempt      0 (first run)")
    lines.append(f"  prompts      {_num(p['total'])}: {_num(p['ok'])} ok, {_num(p['failed'])} failed, "
                 f"{_num(p['not_answered'])} not answered"
                 + (f" ({r['choices_per_prompt']} completions each)" if r["choices_per_prompt"] > 1 else ""))
    if r["layout"] == "virtual":
        lines.append(f"  layout       virtual: rows in {len(r['parts'])} part files "
                     f"({os.path.dirname(r['parts'][0]) if r['parts'] else '-'}/)")
    if r["complete"]:
        lines.append("  complete     yes")
    else:
        lines.append(f"  complete     NO: {_num(p['not_answered'])} prompts not answered; {r['resume']}")
    for e in r["errors"]:
        lines.append(f"  error        {e['count']:,} x {e['message']}")
    if r["distinct_errors"] > len(r["errors"]):
        lines.append(f"  error        ... {r['distinct_errors'] - len(r['errors'])} more distinct messages")
    if r["finish_reasons"]:
        lines.append("  finish       " + ", ".join(f"{k or '(none)'} {v:,}" for k, v in r["finish_reasons"].items()))
    t = r["tokens"]
    lines.append(f"  tokens       prompt {_num(t['prompt'])}, completion {_num(t['completion'])} "
                 "(endpoint usage, summed over ranks)")
    if r["times_s"]:
        lines.append("  phases       " + " | ".join(f"{k} {_num(v)} s" for k, v in r["times_s"].items()))
    th = r["throughput"]
    lines.append(f"  throughput   {_num(th['prompts_per_s'], 1)} prompts/s and "
                 f"{_num(th['completion_tokens_per_s'], 1)} generated tokens/s in the request phase; "
                 f"{_num(th['prompts_per_s_end_to_end'], 1)} prompts/s end to end")
    b = r["balance"]
    if b:
        lines.append("  balance      per rank: min / mean / max (max rank), max/mean")
        labels = {"n_prompts": "prompts", "n_calls": "calls", "n_retries": "retries",
                  "n_failovers": "failovers", "t_requests": "request s"}
        for name, s in b.items():
            timed = name.startswith("t_")
            lo, hi = (_num(s["min"]), _num(s["max"])) if timed else (_num(int(s["min"])), _num(int(s["max"])))
            lines.append(f"    {labels[name]:<11} {lo} / {_num(s['mean'], 2 if timed else 1)} / {hi} "
                         f"(rank {s['argmax']}), {_ratio(s['max_over_mean'])}")
    ranks = r["ranks"]
    n = len(ranks.get("rank", []))
    if n and (all_ranks or n <= RANK_TABLE_LIMIT):
        lines.append("  ranks")
        head = ("rank", "host", "prompts", "ok", "calls", "failed", "retries", "bisect", "failover",
                "request s", "endpoint")
        cols = ("rank", "host", "n_prompts", "n_ok", "n_calls", "n_failed_calls", "n_retries", "n_bisections",
                "n_failovers", "t_requests", "endpoint")
        rows = [head] + [tuple(_cell(ranks.get(c, [None] * n)[i]) for c in cols) for i in range(n)]
        widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
        for row in rows:
            lines.append("    " + "  ".join(cell.rjust(w) if k not in (1, 10) else cell.ljust(w)
                                           for k, (cell, w) in enumerate(zip(row, widths))).rstrip())
        dead = sorted({u for extra in ranks.get("extra", []) for u in (extra or {}).get("dead_endpoints", {})})
        if dead:
            lines.append(f"    dead endpoints: {', '.join(dead)}")
    elif n:
        lines.append(f"  ranks        {n} (table left out; --ranks prints it)")
    lines += endpoint_history(ranks, limit=None if all_ranks else RANK_TABLE_LIMIT)
    tree = r.get("reduce")
    if tree:
        lines.append(f"  reduce       levels {tree['level_sizes']}, {tree['groups_failed']} groups failed, "
                     f"{tree['inputs_left_out']} inputs left out, {tree['shortened']} shortened"
                     + ("" if tree["complete"] else " (NOT complete)"))
        final = tree["final"] if tree["final_ok"] else f"none ({tree['error']})"
        lines.append(f"  final        {final[:200]!r}" + (" …" if len(final) > 200 else ""))
    if params:
        sampling = params.get("sampling") or {}
        lines.append("  sampling     " + (", ".join(f"{k}={json.dumps(v)}" for k, v in sampling.items()) or "-"))
        keys = ("batch_size", "concurrency", "request_timeout", "time_limit", "input")
        lines.append("  params       " + ", ".join(f"{k}={params.get(k)}" for k in keys if k in params))
    return "\n".join(lines)


def endpoint_history(ranks: dict, limit: int | None = None) -> list[str]:
    """Lines saying, per endpoint, when it was lost and when it came back, as its own rank saw
    it (``ranks/extra``'s ``endpoint_events``: seconds after the request phase began); at most
    ``limit`` endpoints, then how many more."""
    lines = []
    extras, urls = ranks.get("extra", []), ranks.get("endpoint", [])
    for i, (extra, url) in enumerate(zip(extras, urls)):
        events = [e for e in (extra or {}).get("endpoint_events", []) if e.get("url") == url]
        if events:
            said = ", ".join(f"{e['event']} {e['t']:.1f} s" + (f" ({e['why'][:80]})" if e.get("why") else "")
                             for e in events)
            lines.append(f"    {url} (rank {i}): {said}")
    if not lines:
        return []
    shown = lines if limit is None else lines[:limit]
    more = [f"    … {len(lines) - len(shown)} more (--ranks prints them)"] if len(shown) < len(lines) else []
    return ["  endpoints    lost and back (seconds into the requests)"] + shown + more


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="report what a result file holds",
                       description="Report a result file: prompts ok/failed/not answered, errors, tokens, "
                       "phase times, throughput, per-rank balance, model and options.")
    p.add_argument("file", help="an mpiswarm result file (.h5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--errors", type=int, default=5, metavar="K", help="commonest errors shown (default 5)")
    p.add_argument("--ranks", action="store_true",
                   help=f"print the per-rank table even beyond {RANK_TABLE_LIMIT} ranks")


@quiet_broken_pipe
def main(args) -> int:
    report = build_report(args.file, errors_shown=args.errors)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_report(report, all_ranks=args.ranks))
    return 0
