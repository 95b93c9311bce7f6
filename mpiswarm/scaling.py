"""``mpiswarm scaling OUT_*.h5 -o report.md --plot scaling.png``: a scaling report from result
files of one prompt set run at different rank counts.

Everything comes from the files' own metadata (``n_ranks``, ``n_prompts``, the wall-clock
phase times ``time_<phase>_s`` and the per-rank ``ranks/t_requests``); no row is read
except a sample of prompts to check that strong-scaling files share their input
(:func:`mpiswarm.store.prompt_fingerprint`).

* **Strong scaling**: every file holds the same prompts.
* **Weak scaling**: every file holds the same number of prompts per rank.

Speedup is the end-to-end throughput (prompts / ``time_total_s``) relative to the smallest
rank count R0, and parallel efficiency is speedup / (R / R0): for strong scaling that is
T(R0)·R0 / (T(R)·R), for weak scaling T(R0) / T(R). Files must come from complete,
uninterrupted runs (``complete``, ``attempt`` 0) of the same model, API and sampling, one
file per rank count; anything else is refused with a message naming the files.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from .inputs import InputError
from .summary import PHASES as ALL_PHASES, balance
from .store import prompt_fingerprint, read_info
from .textout import check_directory, quiet_broken_pipe, write_text

#: the phases a study's table shows (its runs are map-only: no reduce; the total apart)
PHASES = tuple(p for p in ALL_PHASES if p not in ("reduce", "total"))
PHASE_COLORS = {"read": "#810f7c", "health": "#e5ae38", "scatter": "#6d904f", "requests": "#30a2da",
                "gather": "#fc4f30", "write": "#8c564b", "other": "#c7c7c7"}


class ScalingError(InputError):
    """The files cannot be compared (one line naming them)."""


@dataclass
class ScalingRow:
    """One result file's numbers."""

    path: str
    ranks: int
    prompts: int
    wall_s: float
    requests_s: float
    phases_s: dict
    completion_tokens: int
    rank_requests_s: list
    rank_prompts: list
    speedup: float = float("nan")
    efficiency: float = float("nan")

    @property
    def prompts_per_rank(self) -> float:
        return self.prompts / self.ranks

    @property
    def throughput(self) -> float:
        """Prompts per second, end to end (``time_total_s``)."""
        return self.prompts / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def requests_throughput(self) -> float:
        """Prompts per second over the request phase alone."""
        return self.prompts / self.requests_s if self.requests_s > 0 else float("nan")

    @property
    def other_s(self) -> float:
        """Wall time outside the named phases (start-up bookkeeping, summary)."""
        return max(0.0, self.wall_s - sum(self.phases_s.values()))

    def imbalance(self, values) -> dict:
        """:func:`mpiswarm.summary.balance` of a per-rank quantity, NaN where it has None."""
        b = {k: (float("nan") if v is None else v) for k, v in balance(values).items()}
        return {"min": b["min"], "mean": b["mean"], "max": b["max"], "slowest_rank": balance(values)["argmax"],
                "max_over_mean": b["max_over_mean"]}


@dataclass
class ScalingStudy:
    """Several runs of one prompt set (or one per-rank load) at different rank counts."""

    mode: str  # "strong", "weak" or "single"
    model: str
    api: str
    sampling: dict
    rows: list[ScalingRow] = field(default_factory=list)

    @property
    def baseline(self) -> ScalingRow:
        return self.rows[0]

    def as_dict(self) -> dict:
        out = {"mode": self.mode, "model": self.model, "api": self.api, "sampling": self.sampling, "runs": []}
        for r in self.rows:
            out["runs"].append({
                "file": r.path, "ranks": r.ranks, "prompts": r.prompts, "prompts_per_rank": r.prompts_per_rank,
                "wall_s": r.wall_s, "requests_s": r.requests_s, "prompts_per_s": r.throughput,
                "completion_tokens": r.completion_tokens,
                "completion_tokens_per_s": r.completion_tokens / r.wall_s if r.wall_s > 0 else float("nan"),
                "speedup": r.speedup, "efficiency": r.efficiency, "phases_s": dict(r.phases_s, other=r.other_s),
                "rank_requests_s": r.imbalance(r.rank_requests_s), "rank_prompts": r.imbalance(r.rank_prompts),
            })
        return out


def _run_key(info) -> tuple:
    params = info.attrs.get("params") or {}
    return (info.attrs.get("model"), params.get("api"), json.dumps(params.get("sampling"), sort_keys=True))


def load_study(paths) -> ScalingStudy:
    """Read and check the result files at ``paths``; :class:`ScalingError` if they do not
    form one scaling series."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ScalingError("no result files given")
    infos = [read_info(p) for p in paths]
    for info in infos:
        a = info.attrs
        if not a.get("complete", False):
            raise ScalingError(f"{info.path}: incomplete run (complete = False): its times do not cover the "
                               "whole input; finish it (run the same command again) before comparing")
        if a.get("attempt", 0) or a.get("n_resumed", 0):
            raise ScalingError(f"{info.path}: a resumed run (attempt {a.get('attempt')}): its times cover only "
                               "the last attempt; use files of uninterrupted runs")
        missing = [f"time_{p}_s" for p in ("total", "requests") if f"time_{p}_s" not in a]
        if missing or "n_ranks" not in a:
            raise ScalingError(f"{info.path}: no {(missing or ['n_ranks'])[0]} attribute")
    keys = {}
    for info in infos:
        keys.setdefault(_run_key(info), []).append(info.path)
    if len(keys) > 1:
        parts = [f"{', '.join(files)} (model {k[0]}, api {k[1]}, sampling {k[2]})" for k, files in keys.items()]
        raise ScalingError("files of different runs cannot be compared: " + "; ".join(parts))
    infos.sort(key=lambda i: int(i.attrs["n_ranks"]))
    seen = {}
    for info in infos:
        r = int(info.attrs["n_ranks"])
        if r in seen:
            raise ScalingError(f"two files at {r} ranks: {seen[r]}, {info.path} (give one file per rank count)")
        seen[r] = info.path
    prompts = [info.n_rows for info in infos]
    ranks = [int(info.attrs["n_ranks"]) for info in infos]
    if len(infos) == 1:
        mode = "single"
    elif len(set(prompts)) == 1:
        mode = "strong"
        prints = {}
        for info in infos:
            prints.setdefault(prompt_fingerprint(info.path), []).append(info.path)
        if len(prints) > 1:
            raise ScalingError("the files hold the same number of prompts but different prompts: "
                               + " vs ".join(", ".join(g) for g in prints.values()))
    elif all(p * ranks[0] == prompts[0] * r for p, r in zip(prompts, ranks)):
        mode = "weak"
    else:
        raise ScalingError("neither strong scaling (the same prompts) nor weak scaling (the same prompts per "
                           "rank): " + ", ".join(f"{i.path}: {p} prompts on {r} ranks"
                                                for i, p, r in zip(infos, prompts, ranks)))
    key = next(iter(keys))
    params = infos[0].attrs.get("params") or {}
    study = ScalingStudy(mode=mode, model=key[0], api=key[1], sampling=params.get("sampling") or {})
    for info in infos:
        a = info.attrs
        study.rows.append(ScalingRow(
            path=info.path, ranks=int(a["n_ranks"]), prompts=info.n_rows, wall_s=info.time("total"),
            requests_s=info.time("requests"),
            phases_s={p: info.time(p) for p in PHASES if f"time_{p}_s" in a},
            completion_tokens=int(sum(info.ranks.get("completion_tokens", []))),
            rank_requests_s=[float(x) for x in info.ranks.get("t_requests", [])],
            rank_prompts=[int(x) for x in info.ranks.get("n_prompts", [])],
        ))
    base = study.baseline
    for row in study.rows:
        row.speedup = row.throughput / base.throughput
        row.efficiency = row.speedup / (row.ranks / base.ranks)
    return study


def _finite(obj):
    """``obj`` with every NaN or infinite float replaced by None (valid JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _f(x, digits=2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def _pct(x) -> str:
    return "-" if not math.isfinite(x) else f"{100 * x:.0f} %"


def _table(head, rows) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def format_markdown(study: ScalingStudy, title: str = "mpiswarm scaling report", plot: str | None = None) -> str:
    """The report as markdown: what was compared, throughput/speedup/efficiency, phases,
    load imbalance and the files."""
    b = study.baseline
    rows = study.rows
    sampling = ", ".join(f"{k}={json.dumps(v)}" for k, v in study.sampling.items()) or "defaults"
    if study.mode == "strong":
        what = (f"**Strong scaling**: the same {b.prompts:,} prompts on {', '.join(str(r.ranks) for r in rows)} "
                "ranks.")
        eff = (f"Speedup = throughput / throughput at {b.ranks} rank{'s' * (b.ranks > 1)}; parallel efficiency = "
               f"speedup / (ranks / {b.ranks}) = T({b.ranks})·{b.ranks} / (T(R)·R), with T the wall time.")
    elif study.mode == "weak":
        what = (f"**Weak scaling**: the same {b.prompts_per_rank:,.0f} prompts per rank on "
                f"{', '.join(str(r.ranks) for r in rows)} ranks.")
        eff = (f"Speedup = throughput / throughput at {b.ranks} rank{'s' * (b.ranks > 1)} (scaled speedup); "
               f"parallel efficiency = speedup / (ranks / {b.ranks}) = T({b.ranks}) / T(R), with T the wall time.")
    else:
        what = f"A single run: {b.prompts:,} prompts on {b.ranks} ranks."
        eff = "Speedup and efficiency need runs at two rank counts at least."
    lines = [f"# {title}", "", f"{what} Model `{study.model}`, API `{study.api}`, sampling {sampling}.", ""]
    if plot:
        lines += [f"![throughput, efficiency and phases vs ranks]({plot})", ""]
    lines += ["## Throughput", ""]
    lines += _table(
        ("ranks", "prompts", "prompts/rank", "wall s", "requests s", "prompts/s", "speedup", "efficiency"),
        [(r.ranks, f"{r.prompts:,}", _f(r.prompts_per_rank, 0 if r.prompts % r.ranks == 0 else 1), _f(r.wall_s),
          _f(r.requests_s), _f(r.throughput, 1), _f(r.speedup), _pct(r.efficiency)) for r in rows])
    lines += ["", eff + " Wall time = `time_total_s`; requests = `time_requests_s` (the request phase, ended "
              "by the slowest rank).", "", "## Phases (wall-clock seconds)", ""]
    lines += _table(("ranks",) + PHASES + ("other", "total"),
                    [(r.ranks, *(_f(r.phases_s.get(p)) for p in PHASES), _f(r.other_s), _f(r.wall_s))
                     for r in rows])
    lines += ["", "## Load imbalance (per-rank request time, `ranks/t_requests`)", ""]
    table = []
    for r in rows:
        t = r.imbalance(r.rank_requests_s)
        p = r.imbalance(r.rank_prompts)
        table.append((r.ranks, _f(t["min"]), _f(t["mean"]), _f(t["max"]), t["slowest_rank"],
                      _f(t["max_over_mean"]), _f(p["max_over_mean"])))
    lines += _table(("ranks", "min s", "mean s", "max s", "slowest rank", "max/mean", "prompts max/mean"), table)
    lines += ["", "max/mean = 1.00 is a perfectly even spread; the request phase lasts as long as the slowest "
              "rank.", "", "## Files", ""]
    lines += ["| ranks | file |", "|---:|---|"] + [f"| {r.ranks} | `{r.path}` |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(study: ScalingStudy, path: str) -> None:
    """A PNG with throughput and efficiency vs ranks and the per-phase time of each run
    (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = study.rows
    ranks = [r.ranks for r in rows]
    b = study.baseline
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    label = {"strong": "strong scaling", "weak": f"weak scaling, {b.prompts_per_rank:,.0f} prompts/rank",
             "single": "one run"}[study.mode]
    fig.suptitle(f"mpiswarm {label} — model {study.model}", fontsize=13)

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    measured = [r.throughput for r in rows]
    ax1.plot(ranks, [b.throughput * r / b.ranks for r in ranks], ":", color="black", label="ideal (linear)")
    ax1.plot(ranks, [r.requests_throughput for r in rows], "s--", color="#6d904f", lw=1.5, ms=5,
             label="request phase only")
    ax1.plot(ranks, measured, "o-", color="#30a2da", lw=2, label="end to end (wall time)")
    for r, y in zip(ranks, measured):
        ax1.annotate(f"{y:,.1f}" if y < 10 else f"{y:,.0f}", (r, y), textcoords="offset points", xytext=(6, -12),
                     ha="left", fontsize=8)
    ax1.set_yscale("log")
    finite = [y for y in measured + [b.throughput * r / b.ranks for r in ranks] if math.isfinite(y) and y > 0]
    if finite:
        ax1.set_ylim(min(finite) / 1.6, max(finite) * 1.6)
    ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax1.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,.1f}" if y < 10 else f"{y:,.0f}"))
    ax1.yaxis.set_minor_formatter(NullFormatter())
    ax1.set_title("Throughput (log-log)")
    ax1.set_ylabel("prompts / s")
    eff = [100 * r.efficiency for r in rows]
    ax2.axhline(100, ls=":", color="black", label="ideal")
    ax2.plot(ranks, eff, "o-", color="#fc4f30", lw=2, label="parallel efficiency")
    for r, y in zip(ranks, eff):
        if math.isfinite(y):
            ax2.annotate(f"{y:.0f} %", (r, y), textcoords="offset points", xytext=(0, -15), ha="center", fontsize=8)
    ax2.set_ylim(0, max(110, 10 + max((y for y in eff if math.isfinite(y)), default=100)))
    ax2.set_title("Parallel efficiency" + (" (weak: T(%d) / T(R))" % b.ranks if study.mode == "weak" else ""))
    ax2.set_ylabel("%")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks)
        ax.set_xticklabels([str(r) for r in ranks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("MPI ranks")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper left" if ax is ax1 else "lower left", fontsize=9)

    x = list(range(len(rows)))
    bottom = [0.0] * len(rows)
    for phase in PHASES + ("other",):
        heights = [r.other_s if phase == "other" else r.phases_s.get(phase, 0.0) for r in rows]
        if not any(h > 0 for h in heights):
            continue
        ax3.bar(x, heights, bottom=bottom, color=PHASE_COLORS[phase], label=phase, width=0.6, edgecolor="white")
        bottom = [s + h for s, h in zip(bottom, heights)]
    for i, total in enumerate(bottom):
        ax3.annotate(f"{total:.2f} s", (i, total), textcoords="offset points", xytext=(0, 3), ha="center",
                     fontsize=8)
    ax3.set_xticks(x)
    ax3.set_xticklabels([str(r) for r in ranks])
    ax3.set_xlabel("MPI ranks")
    ax3.set_ylabel("wall-clock seconds")
    ax3.set_title("Wall time per phase")
    ax3.legend(loc="upper left", fontsize=9, ncol=2)
    ax3.set_ylim(0, 1.3 * max(bottom))
    ax3.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("scaling", help="a scaling report (markdown and a plot) from runs at different rank counts",
                       description="Compare result files of one prompt set (strong scaling) or of one load per "
                       "rank (weak scaling) run at different rank counts: throughput, speedup, parallel "
                       "efficiency, phase times and load imbalance, from the files' metadata.")
    p.add_argument("files", nargs="+", help="result files (.h5), one per rank count")
    p.add_argument("-o", "--output", default="-", help="the markdown report (default: standard output)")
    p.add_argument("--plot", metavar="PNG", help="also write a PNG plot (needs matplotlib: pip install "
                   "'mpiswarm[plot]')")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON instead of markdown")
    p.add_argument("--title", default="mpiswarm scaling report", help="the report's title")


@quiet_broken_pipe
def main(args) -> int:
    study = load_study(args.files)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'mpiswarm[plot]'") from None
    for path in filter(None, (args.plot, args.output)):
        if check_directory(path):
            raise InputError(check_directory(path))
    if args.plot:
        plot(study, args.plot)
    if args.json:
        text = json.dumps(_finite(study.as_dict()), indent=2) + "\n"
    else:
        rel = None
        if args.plot:
            base = os.getcwd() if args.output == "-" else os.path.dirname(os.path.abspath(args.output))
            rel = os.path.relpath(os.path.abspath(args.plot), base)
        text = format_markdown(study, title=args.title, plot=rel)
    write_text(args.output, text)
    return 0
