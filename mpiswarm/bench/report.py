"""The benchmark's report: docs/bench.md from the results that :mod:`.suite` measures.

``markdown`` turns the results dict (``suite.main`` builds it, and saves it as docs/bench.json) into
the report: the summary table (a section's rows from ``_<section>_summary``), then one part a section
(``_<section>_part``; ``_model_markdown`` for the scale model), ``_SECTIONS`` pairing the two in order;
``notes`` adds what the run's numbers say where a goal is missed or a default misbehaves.
``python tools/bench.py --render docs/bench.json`` runs just these on a saved run. Nothing here
measures anything or starts a process.
"""
from __future__ import annotations

# --- a published figure (../shared/background: Aurora-Swarm), quoted in section 1, not measured in the run
AURORA_SWARM_POOL_US = 42.0  # µs per prompt of Aurora-Swarm's VLLMPool alone, measured earlier on this VM


def _f(x, d=2):
    return "–" if x is None else f"{x:,.{d}f}"


def _keyed(d: dict) -> dict:
    """``d`` with integer keys (JSON turns them into strings)."""
    return {int(k): v for k, v in d.items()}


def _yes(ok) -> str:
    return "yes" if ok else "**no**"


def markdown(res: dict) -> str:
    """docs/bench.md from the results dict: heading, summary table, a part a section run, notes, failures."""
    L = _heading(res["meta"])
    s = res.get("sections", {})
    L.extend(_summary(s))
    for name, (_, part) in _SECTIONS.items():
        if name in s:
            L.extend(part(s[name]))
    L.extend(_notes_part(res.get("notes")))
    L.extend(_failed_part(res.get("errors")))
    return "\n".join(L)


def _heading(meta: dict) -> list[str]:
    """The title and the run's machine, load and duration."""
    return ["# mpiswarm benchmark\n",
            f"`{meta['command']}` on {meta['date']}: {meta['cpus']} cores, load average {meta['load_before']:.1f} "
            f"before and {meta['load_after']:.1f} after, Python {meta['python']}; the whole benchmark took "
            f"{meta['wall_s']:.0f} s. Every figure is a ratio against a reference measured in the same run. "
            "Endpoints are mpiswarm's vLLM simulator on 127.0.0.1 (`python -m mpiswarm.sim`), sharing the cores "
            "with the ranks." + _code(meta) + "\n"]


def _code(meta: dict) -> str:
    """The code the run measured, where the run recorded it (runs before 2026-12-07 did not)."""
    if not meta.get("commit"):
        return ""
    dirty = ", with uncommitted changes in `mpiswarm/`" if meta.get("uncommitted") else ""
    return f" Code: commit `{meta['commit'][:10]}`{dirty}, started {meta['started']}."


_SUMMARY_COLUMNS = ("#", "figure", "mpiswarm", "reference (same run)", "ratio", "goal", "holds")


def _summary_row(*cells: str) -> str:
    """One row of the summary table, a cell for each of ``_SUMMARY_COLUMNS``."""
    if len(cells) != len(_SUMMARY_COLUMNS):
        raise ValueError(f"a summary row takes {len(_SUMMARY_COLUMNS)} cells, not {len(cells)}: {cells}")
    return "| " + " | ".join(cells) + " |"


def _summary(s: dict) -> list[str]:
    """The summary table: each section run gives its rows, in the sections' order."""
    L = ["## Summary\n", _summary_row(*_SUMMARY_COLUMNS), "|---|---|---:|---:|---:|---|---|"]
    for name, (rows, _) in _SECTIONS.items():
        if name in s:
            L.extend(rows(s[name]))
    L.append("")
    return L


def _cpu_summary(c: dict) -> list[str]:
    """Summary row 1: CPU per prompt, mpiswarm against the bare pipeline."""
    return [_summary_row("1", "CPU µs per prompt, one rank, instant endpoint", _f(c["us_per_prompt"]["mpiswarm"]),
                         f"{_f(c['us_per_prompt']['bare'])} (bare json + httpx + h5py)", f"{_f(c['ratio'])}×",
                         "≤ 1.5×", _yes(c["holds"]))]


def _cpu_part(c: dict) -> list[str]:
    """Part 1: CPU per prompt of each pipeline, and by schedule where that was measured."""
    L = ["## 1. CPU per prompt\n"]
    L.append(f"`tools/bench_cpu.py`'s `measure`: CPU time (user + system) of each pipeline as a child process "
             f"against one instant simulated endpoint (`--time-scale 0`, its own process, not counted), the slope "
             f"between {c['sizes'][0]:,} and {c['sizes'][1]:,} prompts, {c['batch_size']} prompts a call, best of "
             f"{c['repeat']} interleaved runs.\n")
    L.append("| pipeline | CPU µs/prompt | ratio |\n|---|---:|---:|")
    L.append(f"| bare (json + httpx + h5py) | {_f(c['us_per_prompt']['bare'])} | 1.00 |")
    L.append(f"| mpiswarm run (1 rank) | {_f(c['us_per_prompt']['mpiswarm'])} | {_f(c['ratio'])} |")
    L.append(f"\nFor scale: Aurora-Swarm's `VLLMPool` alone cost ~{AURORA_SWARM_POOL_US:.0f} µs/prompt on this "
             "machine (an earlier measurement, not repeated here). mpiswarm's figure includes its checkpoint "
             "shard, the per-rank statistics and the full HDF5 schema.\n")
    d = c.get("by_schedule")
    if d:
        n0, n1 = c["sizes"]
        L.append("By schedule (one run each, same endpoint, `--batch-size 1024`; `measure` runs the default, "
                 "dynamic):\n")
        L.append(f"| schedule | CPU µs/prompt | vs bare | calls at {n1:,} | request phase s at {n0:,} / {n1:,} |"
                 "\n|---|---:|---:|---:|---:|")
        for name, x in d.items():
            calls, req = _keyed(x["n_calls"]), _keyed(x["requests_s"])
            L.append(f"| {name} | {_f(x['us_per_prompt'])} | {_f(x['us_per_prompt'] / c['us_per_prompt']['bare'])}× |"
                     f" {calls[n1]} | {_f(req[n0])} / {_f(req[n1])} |")
        L.append("")
    return L


def _batch_summary(b: dict) -> list[str]:
    """Summary rows 2a and 2b: batch against single requests, through mpiexec and through the client layer."""
    sm = b["small"]["rows"]
    lg = b["large"]
    bt, sg = lg["rows"][0], lg["rows"][1]
    return [_summary_row("2a", "20 prompts, 4 endpoints (4 ranks): request phase, batch",
                         f"{_f(sm[0]['time_s'])} s, {sm[0]['http_requests']} req",
                         f"{_f(sm[1]['time_s'])} s, {sm[1]['http_requests']} req (single)",
                         f"{_f(sm[0]['speedup_vs_single'])}× faster", "published 1.12×", "–"),
            _summary_row("2b",
                         f"{lg['prompts']:,} prompts, {lg['endpoints']} endpoints (client layer, one process): batch",
                         f"{_f(bt['time_s'])} s, {bt['http_requests']:,} req",
                         f"{_f(sg['time_s'])} s, {sg['http_requests']:,} req (single)",
                         f"{_f(bt['speedup_vs_single'])}× faster", "–", "–")]


def _batch_part(b: dict) -> list[str]:
    """Part 2: batch against single requests, 20 prompts through mpiexec, then the large run in one process."""
    sm = b["small"]
    L = ["## 2. Batch vs single requests\n"]
    L.append(f"**20 prompts on 4 endpoints** — `mpiexec -n 4 mpiswarm run`, one simulated endpoint per rank, "
             f"`--max-tokens {sm['max_tokens']}`, `--time-scale {sm['time_scale']:g}` (a list of 5 takes about "
             f"the published 2.76 s); median of {sm['repeat']} interleaved runs. Time = the request phase "
             f"(`time_requests_s`); HTTP requests counted at the simulator (`mpiswarm_sim:http_requests_total`).\n")
    L.append("| mode | options | time s | prompts/s | HTTP requests | speedup vs single | wall s (in file) | "
             "launch s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for r in sm["rows"]:
        L.append(f"| {r['mode']} | `{' '.join(r['args'][2:]) or '(defaults)'}` | {_f(r['time_s'])} | "
                 f"{_f(r['prompts_per_s'])} | {r['http_requests']} | {_f(r['speedup_vs_single'])}× | "
                 f"{_f(r['wall_s'])} | {_f(r['launch_s'])} |")
    p = sm["published"]
    L.append(f"| *published, real vLLM: batch* | | *{p['batch']['time_s']}* | *{p['batch']['prompts_per_s']}* | "
             f"*{p['batch']['requests']}* | *{p['speedup']}×* | | |")
    L.append(f"| *published, real vLLM: single* | | *{p['single']['time_s']}* | *{p['single']['prompts_per_s']}* |"
             f" *{p['single']['requests']}* | *1.00×* | | |")
    L.append("\n*launch s*: `mpiexec` + Python start-up on 2 cores, outside mpiswarm's own `time_total_s`.\n")
    lg = b["large"]
    L.append(f"**{lg['prompts']:,} prompts on {lg['endpoints']} endpoints** — measured with mpiswarm's client "
             "layer directly, from one process (clearly not `mpiexec`): for each endpoint the code a rank runs "
             "between scatter and gather (`Dispatcher` + `WorkSource` + `EndpointPool`, the static schedule), all "
             f"{lg['endpoints']} in one event loop — the shape of Aurora-Swarm's single-process `VLLMPool`. "
             f"{lg['endpoints']} MPI ranks on 2 cores would measure MPICH's spinning and 100 Python start-ups "
             "instead (64 ranks took 8 s for a scatter + gather here), and mpiswarm's CLI gives each rank one "
             f"endpoint. One simulator process serves all {lg['endpoints']} endpoints, "
             f"`--time-scale {lg['time_scale']:g}`, `--max-tokens {lg['max_tokens']}`; single = one "
             f"`/v1/completions` call per prompt (`batch_size=1`), all of an endpoint's prompts in flight.\n")
    L.append("| mode | time s | prompts/s | HTTP requests | speedup vs single | client CPU s | simulator CPU s | "
             "client set-up s |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in lg["rows"]:
        L.append(f"| {r['mode']} | {_f(r['time_s'])} | {_f(r['prompts_per_s'], 1)} | {r['http_requests']:,} | "
                 f"{_f(r['speedup_vs_single'])}× | {_f(r['cpu_s'], 1)} | {_f(r['sim_cpu_s'], 1)} | "
                 f"{_f(r['setup_s'])} |")
    L.append("| *published (expected): batch vs single* | | | *100 vs 10,000* | | | | |\n")
    L.append(f"Time, client CPU and simulator CPU cover the calls only; *client set-up* (creating the "
             f"{lg['endpoints']} `EndpointClient`s, which a rank does once, before its first call) is not in "
             "the time. A list call's engine time alone is about 0.19 s × the time scale here.\n")
    return L


def _concurrency_summary(cc: dict) -> list[str]:
    """Summary rows 3: s per request at each concurrency, a row a variant, against one at a time."""
    rows = cc["rows"]
    ref = rows[0]
    L = []
    for variant in dict.fromkeys(r["variant"] for r in rows[1:]):
        mine = [r for r in rows if r["variant"] == variant]
        per = " / ".join(f"{r['s_per_request']:.3f}" for r in mine)
        ratios = " / ".join(f"{r['ratio_vs_sequential']:.2f}" for r in mine)
        levels = " / ".join(str(r["concurrency"]) for r in mine)
        L.append(_summary_row("3", f"s per request at {levels} concurrent, `{variant.split(' (')[0]}`", per,
                              f"{ref['s_per_request']:.3f} (one at a time)", f"{ratios}×", "falls as C rises",
                              _yes(mine[0]["falls"])))
    return L


def _concurrency_part(cc: dict) -> list[str]:
    """Part 3: the concurrency sweep against one request at a time, and the published figures."""
    L = ["## 3. Concurrency sweep\n"]
    L.append(f"C prompts, C chat requests in flight (`mpiexec -n 1 mpiswarm run --api chat --concurrency C`), one "
             f"simulated endpoint (continuous batching, `--time-scale {cc['time_scale']:g}`, `--max-tokens "
             f"{cc['max_tokens']}`: one request alone takes ~1.3 s, as in the published test); best of "
             f"{cc['repeat']}. s/request = request phase / requests. The reference, in the same run: "
             f"{cc['sequential_requests']} requests one at a time.\n")
    L.append("| options | C | HTTP requests | time s | s per request | vs one at a time |\n|---|---:|---:|---:|---:|---:|")
    for r in cc["rows"]:
        L.append(f"| `{r['variant'].split(' (')[0]}` | {r['concurrency']} | {r['requests']} | {_f(r['time_s'])} | "
                 f"{_f(r['s_per_request'], 3)} | {_f(r['ratio_vs_sequential'])}× |")
    pub = cc["published_s_per_request"]
    L.append("\nPublished (vLLama investigation, real engines), s per request at 5 → 10 concurrent: custom vLLM "
             f"wrapper {pub['custom vLLM wrapper']['5']} → {pub['custom vLLM wrapper']['10']} (rises: no continuous "
             f"batching), Ollama {pub['Ollama']['5']} → {pub['Ollama']['10']}.\n")
    return L


def _makespan_summary(m: dict) -> list[str]:
    """Summary rows 4: the makespans against the ideal (the diagnostic schedules too), and the issue check."""
    L = []
    for sched in ("dynamic", "static"):
        b = m["best"][sched]
        goal = "≥ 0.9" if sched == "dynamic" else "(~0.31 expected)"
        holds = _yes(b["ideal_over_makespan"] >= 0.9) if sched == "dynamic" else "–"
        L.append(_summary_row("4", f"makespan, speeds 1,1,1,0.25, 6,500 prompts, `--schedule {sched}`",
                              f"{_f(b['makespan_s'])} s", f"{_f(m['ideal_s'])} s ideal",
                              f"{_f(b['ideal_over_makespan'])} ideal/makespan", goal, holds))
    for sched, b in m["best"].items():
        if sched not in ("dynamic", "static"):
            L.append(_summary_row("4", f"diagnostic: `--schedule {sched}`", f"{_f(b['makespan_s'])} s",
                                  f"{_f(m['ideal_s'])} s ideal", f"{_f(b['ideal_over_makespan'])} ideal/makespan",
                                  "–", "–"))
    ic = m["issue_check"]
    L.append(_summary_row("4", "issue check: 3 × 400 + 1 × 100 prompts/s, requests phase within 1/0.9 of 5 s",
                          f"{_f(ic['requests_s'])} s", f"{_f(ic['limit_s'])} s",
                          _f(ic["nominal_ideal_s"] / ic["requests_s"]), "≥ 0.9", _yes(ic["holds"])))
    return L


def _makespan_part(m: dict) -> list[str]:
    """Part 4: makespan with one slow endpoint, run by run, then the fills alone and the issue check."""
    L = ["## 4. Makespan with one slow endpoint\n"]
    L.append(f"Calibrated in this run on the job's own prompts (the simulator's time depends on prompt "
             f"lengths): one full-speed endpoint alone answered the first {m['calibration_prompts']:,} as one list "
             f"at {m['rate_at_time_scale_1']:.0f} prompts/s at `--time-scale 1`, so `--time-scale "
             f"{m['time_scale']:g}`; there, all {m['prompts']:,} in one list: c = {m['full_speed_rate']:.0f} "
             f"prompts/s. Capacity 3c + c/4 = {m['capacity']:.0f} prompts/s; ideal for {m['prompts']:,} prompts = "
             f"{m['ideal_s']:.2f} s. `mpiexec -n 4 mpiswarm run --max-tokens {m['max_tokens']} --schedule S`, "
             f"simulator `--count 4 --speeds 1,1,1,0.25 --time-scale {m['time_scale']:g}`. Makespan = "
             "`time_requests_s`.\n")
    L.append("| schedule | makespan s | ideal/makespan | total s (in file) | wall s (outside) | prompts per rank "
             "| t_requests per rank s | engine fill per rank | calls per rank | rank CPU s | simulator CPU s | "
             "ours busy | machine busy | load before |")
    L.append("|---|---:|---:|---:|---:|---|---|---|---|---|---:|---:|---:|---:|")
    for f in m["runs"]:
        rk = f["ranks"]
        L.append(f"| {f['schedule']} | {_f(f['makespan_s'])} | {_f(f['ideal_over_makespan'])} | "
                 f"{_f(f['times']['total'])} | {_f(f['outside_wall_s'])} | {', '.join(map(str, rk['n_prompts']))} | "
                 f"{', '.join(_f(x) for x in rk['t_requests'])} | {', '.join(_f(x) for x in f['fill_per_rank'])} | "
                 f"{', '.join(map(str, rk['n_calls']))} | "
                 f"{', '.join(_f(x, 1) for x in rk['cpu_s'])} | {_f(f['sim_cpu_s'], 1)} | "
                 f"{f['cpu_busy_fraction']:.0%} | "
                 f"{'–' if f.get('machine_busy') is None else format(f['machine_busy'], '.0%')} | "
                 f"{_f(f.get('load_before'), 1)} |")
    so = m["solo"]
    L.append(f"\n*engine fill* = a rank's prompts / its `t_requests` / its endpoint's capacity (c × speed); rank 0's "
             "`t_requests` runs until every rank is done, so its fill reads low. One rank alone on one full-speed "
             f"endpoint, the job's first {so['prompts']:,} prompts (fill against one list of them): {so['dynamic_rate']:.0f} prompts/s with "
             f"the default dynamic schedule ({so['dynamic_calls']} calls; fill {so['dynamic_fill']:.2f}), "
             f"{so['static_rate']:.0f} prompts/s with `--schedule static` (one list; fill {so['static_fill']:.2f}), "
             f"{so['fixed96_rate']:.0f} prompts/s with `--batch-size 96` ({so['fixed96_calls']} calls; fill "
             f"{so['fixed96_fill']:.2f}). The `--batch-size 96 --concurrency 8` row is a diagnostic (more rows in "
             "flight per rank, calls of a fixed size); the goal is judged on the defaults.")
    cl = m.get("client_layer_fill")
    if cl:
        L.append("\nThe same endpoint driven by one rank's client layer alone, in one process (no MPI, no control "
                 f"plane; `Dispatcher` + `WorkSource`, the default 8 calls in flight, {so['prompts']:,} prompts): "
                 + ", ".join(f"{k}: {v['rate']:.0f} prompts/s ({v['calls']} calls; fill {v['fill']:.2f})"
                             for k, v in cl.items()) + ".")
    ic = m["issue_check"]
    L.append(f"\nIssue check (3 endpoints at 400 prompts/s, one at 100: ideal {ic['nominal_ideal_s']:.2f} s): "
             f"request phase {ic['requests_s']:.2f} s against a limit of {ic['limit_s']:.2f} s — "
             f"{'holds' if ic['holds'] else 'misses'}; launch and the other phases add "
             f"{ic['launch_and_other_s']:.2f} s. *ours busy*: (ranks' `cpu_s` + simulator CPU) / (2 cores × "
             "outside wall); *machine busy*: every process's CPU over the job (`/proc/stat`), other jobs on the "
             "machine included; *load before*: the 1-minute load average as the job started.\n")
    return L


def _gather_summary(g: dict) -> list[str]:
    """Summary rows 5: gather + write against bare h5py on rank 0, and the virtual layout where it ran."""
    L = [_summary_row("5", f"gather + write {g['rows']:,} results (4 ranks)", f"{_f(g['best']['mpiswarm_s'])} s",
                      f"{_f(g['best']['bare_s'])} s (bare h5py, rank 0)", f"{_f(g['ratio'])}×", "≤ 1.5×",
                      _yes(g["holds"]))]
    if "virtual_s" in g["best"]:
        L.append(_summary_row("5",
                              "the same, `--layout virtual` (every rank writes its block; rows dealt in calls of 48)",
                              f"{_f(g['best']['virtual_s'])} s", f"{_f(g['best']['bare_s'])} s",
                              f"{_f(g['virtual_ratio'])}×", "–", "–"))
    return L


def _gather_part(g: dict) -> list[str]:
    """Part 5: gather + write against bare h5py, with the virtual layout and one round's steps where measured."""
    L = ["## 5. Gather + write\n"]
    L.append(f"`mpiexec -n {g['ranks']}`: each rank builds {g['rows'] // g['ranks']:,} result rows (`ResultColumns`, "
             f"answers of ~{g['answer_chars']:,} characters of the simulator's words, Latin-1 accents included: "
             f"{g['answer_bytes_mean']:.0f} UTF-8 bytes on average), then does what `mpiswarm run` does after its "
             f"requests: `gather_in_rounds` ({g.get('rounds', '?')} rounds of at most "
             f"{g.get('diag', {}).get('round_rows', 0):,} rows; a round is one packed message a rank, one "
             "`Igatherv`) with rank 0 writing each round as it comes (`ResultWriter.write_rows`: strings handed "
             "to HDF5 as pointers into the received buffer), then `gather_stats`, the `ranks` table and the "
             "attributes — against rank 0 alone writing the same arrays (prompt, completion, custom_id, ok, rank, "
             "prompt_tokens, completion_tokens, latency_s, held as Python objects) with bare h5py; best of "
             f"{g['repeat']}. File {g['file_mb']:.0f} MB. 4 ranks share 2 cores; ranks that wait sleep "
             "(`Ibarrier`/`Igatherv` + `Test` + 1 ms sleeps), so rank 0 has a core while it writes.\n")
    L.append("| pipeline | s | ratio |\n|---|---:|---:|")
    L.append(f"| bare h5py write on rank 0 | {_f(g['best']['bare_s'])} | 1.00 |")
    L.append(f"| mpiswarm gather + write | {_f(g['best']['mpiswarm_s'])} | {_f(g['ratio'])} |")
    L.append(f"| of which gather (packing, Igatherv, unpacking, waiting for the ranks) | {_f(g['split']['gather_s'])} | |")
    L.append(f"| of which write (`write_rows`, `ranks`, attributes) | {_f(g['split']['write_s'])} | |")
    if "virtual_s" in g["best"]:
        L.append(f"| `--layout virtual`: `layout.write_parts` + the output's virtual datasets | "
                 f"{_f(g['best']['virtual_s'])} | {_f(g['virtual_ratio'])} |")
        L.append(f"| of which writing part files, ranks 0–{g['ranks'] - 1} (in parallel) | "
                 f"{' / '.join(_f(x) for x in g['virtual_split'])} | |")
    L.append(f"\nRank 0's peak memory (`ru_maxrss`): {g['rss_before_gather_mb']:,.0f} MB holding its rows and the "
             f"{g['rows']:,} prompts, {g['rss_after_mpiswarm_mb']:,.0f} MB after gather + write (a round's "
             "buffer at a time); other ranks "
             f"{', '.join(f'{x:,.0f}' for x in g['peak_rss_mb_per_rank'][1:])} MB. mpiswarm also writes "
             "`finish_reason` and `error` (two more string columns) and the `ranks` table, which the bare write "
             "does not.\n")
    if "virtual_s" in g["best"]:
        L.append("`--layout virtual`: the same rows dealt to the ranks in calls of 48 (as the dynamic schedule "
                 "leaves them, so three quarters of each block arrive from other ranks), moved to their block's "
                 "rank a window a round (one `Ialltoall` of the sizes, the messages point to point) with the prompts and custom_ids from rank 0, each rank writing "
                 "its block to a part file at the same time, then rank 0 writing the output's virtual datasets, "
                 f"the `ranks` table and the attributes ({g.get('virtual_parts_mb', 0):,.0f} MB of parts). Here 4 "
                 "ranks share 2 cores, so the parallel writes overlap only two at a time.\n")
    d = g.get("diag")
    if d and "round_rows" in d:
        L.append(f"One round's steps timed alone in the same run ({d['round_rows']:,} rows, "
                 f"{d['bytes'] / 2**20:,.0f} MB): packing (`packed.pack_message`: encode each string, join) "
                 f"{', '.join(f'{x:.2f}' for x in d['pack_s_per_rank'])} s on ranks 0–{g['ranks'] - 1} "
                 f"(4 ranks share 2 cores), the `Igatherv` of the messages {d['gatherv_s']:.2f} s.\n")
    return L


def _scaling_summary(sc: dict) -> list[str]:
    """Summary row 6: weak-scaling efficiency on the wall time at the most ranks."""
    last = sc["rows"][-1]
    return [_summary_row("6", f"weak scaling, {sc['ranks'][0]} → {last['ranks']} ranks: efficiency (wall)",
                         f"{_f(last['wall_s'])} s", f"{_f(sc['rows'][0]['wall_s'])} s (1 rank)",
                         f"{last['efficiency']:.0%}", "–", "–")]


def _scaling_part(sc: dict) -> list[str]:
    """Part 6: weak scaling, a row a rank count."""
    L = ["## 6. Weak scaling\n"]
    L.append(f"`tools/scaling_study.py --ranks {' '.join(map(str, sc['ranks']))} --prompts-per-rank "
             f"{sc['prompts_per_rank']} --time-scale {sc['time_scale']:g}` (`--max-tokens 64 --batch-size 64`), "
             "one simulator process serving every endpoint. Efficiency = T(1) / T(R) on the wall time "
             "(`time_total_s`), and on the request phase.\n")
    L.append("| ranks | prompts | wall s | requests s | prompts/s | efficiency (wall) | efficiency (requests) | "
             "imbalance max/mean |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in sc["rows"]:
        L.append(f"| {r['ranks']} | {r['prompts']:,} | {_f(r['wall_s'])} | {_f(r['requests_s'])} | "
                 f"{_f(r['prompts_per_s'], 1)} | {r['efficiency']:.0%} | {r['requests_efficiency']:.0%} | "
                 f"{_f(r['imbalance'])} |")
    L.append("")
    return L


def _model_summary(m: dict) -> list[str]:
    """Summary rows 7: the scale model's rank 0 after the requests at 10,000 ranks and 100M prompts."""
    big = {(t["ranks"], t["prompts"]): t for t in m["table"]}[(10000, 100_000_000)]
    L = [_summary_row("7", "scale model: rank 0 after the requests, 10,000 ranks, 100M prompts (§7)",
                      f"{big['after_requests_s']:,.0f} s",
                      f"write {big['write_s']:,.0f} s, read (before) {big['read_s']:,.0f} s", "–", "on paper", "–")]
    if "virtual_after_requests_s" in big:
        L.append(_summary_row("7", "the same, `--layout virtual` (a part a rank / a node); the parallel read before",
                              f"{big['virtual_after_requests_s']:,.0f} / {big['node_parts_after_requests_s']:,.0f} s",
                              f"{big['after_requests_s']:,.0f} s single; read {big['read_s']:,.0f} s one process",
                              f"{big['after_requests_s'] / big['virtual_after_requests_s']:,.0f}× less; read "
                              f"{big['parallel_read_s']:,.0f} s", "on paper", "–"))
    return L


def _model_markdown(m: dict) -> list[str]:
    """Part 7: the scale model's measured constants, its rounds checked, rank 0's seconds projected."""
    c = m["constants"]
    L = ["## 7. Scale model: rank 0 at 1,000 and 10,000 ranks\n",
         "`tools/scale_model.py`: rank 0's share of a job, measured per row, per message and per request with "
         "mpiswarm's own functions on this machine, then projected (answers of "
         f"{m['answer_bytes']:,} bytes, rounds of {m['round_rows']:,} rows, calls of {m['call_rows']} rows, "
         f"a first share of {m['first_share']} rows a rank: the defaults).\n",
         "| constant (rank 0 unless said) | measured |\n|---|---:|",
         f"| read + validate the JSONL, one process | {c['read_us_per_row']:.2f} µs/row |",
         f"| parallel read: rank 0 unpacks and merges the other ranks' parts (64 ranks) | "
         f"{c['read_merge_us_per_row']:.2f} µs/row |",
         f"| scatter: pack the prompts | {c['scatter_pack_us_per_row']:.3f} µs/row |",
         f"| serve one chunk request (`Control._hand_out` + `pack_rows`) at 1,000 / 10,000 ranks | "
         f"{_keyed(c['request_us'])[1000]:.1f} / {_keyed(c['request_us'])[10000]:.1f} µs |",
         f"| pack a rank's rows for the gather (`pack_message`; every rank, in parallel) | "
         f"{c['pack_us_per_row']:.2f} µs/row |",
         f"| unpack + sort a round (`unpack_messages`) | {c['unpack_us_per_row']:.3f} µs/row + "
         f"{c['unpack_us_per_message']:.2f} µs/message |",
         f"| receive one more small message (point to point, 2 ranks) | "
         f"{next(r['message_s'] for r in m['rounds'] if r['ranks'] == 2) * 1e6:.2f} µs |",
         f"| `Igatherv` byte rate (slowest of 2–8 ranks) | {m['bytes_per_s'] / 1e9:.1f} GB/s |",
         f"| write (`write_rows`: 5 string columns, numbers) | {c['write_us_per_row']:.2f} µs/row |",
         f"| virtual layout: encode a row's prompt and custom_id for its block's rank | "
         f"{c['texts_us_per_row']:.3f} µs/row ({c['text_bytes']:.0f} bytes) |",
         f"| virtual layout: write a part file (every rank, in parallel) | {c['part_write_us_per_row']:.2f} µs/row |",
         f"| virtual layout: a round's Python per destination rank (10,000 ranks) | "
         f"{c['round_us_per_destination']:.2f} µs |",
         f"| virtual layout: one part in the output's virtual datasets | {c['vds_us_per_part']:.1f} µs |",
         "",
         "A gather round costs rank 0 a + b·R: a = an empty round at 2 ranks "
         f"({m['fit']['a_s'] * 1e3:.2f} ms: two collectives and the waiting ranks' 1 ms sleeps), b = one more "
         f"message received and parsed ({m['fit']['b_s_per_rank'] * 1e6:.2f} µs). Checked at 1–8 ranks "
         "(4 and 8 ranks share 2 cores here: each waiting rank needs a core to wake up, so they read high):\n",
         "| ranks | empty round, measured ms | model ms |\n|---:|---:|---:|"]
    for r in m["rounds"]:
        L.append(f"| {r['ranks']} | {r['round_s'] * 1e3:.2f} | "
                 f"{'–' if r['predicted_s'] is None else format(r['predicted_s'] * 1e3, '.2f')} |")
    if "layouts" in m:
        v = m["virtual_fit"]
        L.append(f"\nA virtual-layout round costs rank 0 a + b·R with a = {v['a_s'] * 1e3:.2f} ms (a round of one "
                 f"row a rank at 2 ranks) and b = {v['b_s_per_rank'] * 1e6:.2f} µs. Both layouts end to end after the "
                 f"requests, {m['check_rows']:,} rows of 1 KB answers dealt to the ranks in calls of "
                 f"{m['call_rows']}, rank 0's seconds (best of 2) against the model — with a core a rank, and with "
                 f"the ranks sharing this machine's {m['cores']} cores (every parallel term × R / {m['cores']}):\n")
        L.append("| ranks | single, measured | model (shared cores) | virtual, measured | model (shared cores) | "
                 "virtual / single |\n|---:|---:|---:|---:|---:|---:|")
        for r in m["layouts"]:
            L.append(f"| {r['ranks']} | {r['single_s']:.2f} | {r['model_single_s']:.2f} ({r['model_shared_single_s']:.2f}) | "
                     f"{r['virtual_s']:.2f} | {r['model_virtual_s']:.2f} ({r['model_shared_virtual_s']:.2f}) | "
                     f"{r['virtual_s'] / r['single_s']:.2f} |")
    L.append("\nRank 0's seconds, phase by phase (control: chunk requests served during the request phase, "
             "spread over it; gather and write: after it; read: before anything is sent):\n")
    L.append("| ranks | prompts | read: one process / parallel | scatter | control (requests) | single: gather "
             "(rounds) | single: write | after the requests: single | virtual, a part a rank (rounds) | "
             "virtual, a part a node |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in m["table"]:
        L.append(f"| {t['ranks']:,} | {t['prompts']:,} | {t['read_s']:,.1f} / {t['parallel_read_s']:,.1f} | "
                 f"{t['scatter_s']:,.2f} | {t['control_s']:,.1f} ({t['control_requests']:,}) | "
                 f"{t['gather_s']:,.1f} ({t['rounds']}) | {t['write_s']:,.1f} | {t['after_requests_s']:,.1f} | "
                 f"{t['virtual_after_requests_s']:,.1f} ({t['virtual_rounds']}) | "
                 f"{t['node_parts_after_requests_s']:,.1f} |")
    L.append("")
    return L


def _notes_part(items: list[str] | None) -> list[str]:
    """The notes, a bullet each; none, no part."""
    if not items:
        return []
    return ["## Notes\n", *(f"* {n}" for n in items), ""]


def _failed_part(errors: dict[str, str] | None) -> list[str]:
    """The sections that failed, each with its error's first line; none, no part."""
    if not errors:
        return []
    return ["## Sections that failed\n", *(f"* `{k}`: {v.splitlines()[0]}" for k, v in errors.items()), ""]


# a section's rows in the summary table and its part of the report, in the report's order (suite.SECTIONS)
_SECTIONS = {"cpu": (_cpu_summary, _cpu_part), "batch": (_batch_summary, _batch_part),
             "concurrency": (_concurrency_summary, _concurrency_part), "makespan": (_makespan_summary, _makespan_part),
             "gather": (_gather_summary, _gather_part), "scaling": (_scaling_summary, _scaling_part),
             "model": (_model_summary, _model_markdown)}


def notes(res: dict) -> list[str]:
    """What this run's numbers say where a goal is missed or a default misbehaves (facts from the run)."""
    out = []
    s = res.get("sections", {})
    c = s.get("cpu")
    if c and c.get("by_schedule"):
        st, dy = c["by_schedule"]["static"], c["by_schedule"]["dynamic"]
        n0, n1 = c["sizes"]
        rs, rd = _keyed(st["requests_s"]), _keyed(dy["requests_s"])
        calls_d, calls_s = _keyed(dy["n_calls"])[n1], _keyed(st["n_calls"])[n1]
        if calls_d > 1.5 * calls_s:
            out.append(f"CPU (1): against an instant endpoint the default dynamic schedule made {calls_d} calls for "
                       f"{n1:,} prompts where static made {calls_s}, and its request phase took {rd[n1]:.2f} s against "
                       f"{rs[n1]:.2f} s: one rank fetched its work from itself in small chunks.")
        else:
            out.append(f"CPU (1): one rank has nobody to balance with and runs the static path: {calls_d} calls for "
                       f"{n1:,} prompts either way, request phase {rd[n1]:.2f} s (dynamic) and {rs[n1]:.2f} s (static). "
                       f"Per prompt: static {st['us_per_prompt']:.1f} µs, dynamic {dy['us_per_prompt']:.1f} µs (one run "
                       "each); the ratio moves with the machine's load (other jobs share these 2 cores): runs of the "
                       "same code gave 0.8–1.6× before the gather and write were reworked.")
    b = s.get("batch")
    if b:
        lg = b["large"]["rows"]
        bt, sg = lg[0], lg[1]
        out.append(f"Batch vs single (2b): the {sg['http_requests']:,} single requests cost the one client process "
                   f"{sg['cpu_s']:.1f} s of CPU ({sg['cpu_s'] / sg['http_requests'] * 1e3:.1f} ms a request through "
                   f"openai + httpx) against {bt['cpu_s']:.1f} s for {bt['http_requests']} lists: with every rank's "
                   "client in one process (Aurora-Swarm's shape) the client, not the engines, sets the pace of "
                   "one-request-per-prompt runs. With one rank per endpoint that cost is spread over the ranks.")
    cc = s.get("concurrency")
    if cc:
        doc = [r for r in cc["rows"] if "documented" in r["variant"]]
        b1 = [r for r in cc["rows"] if "batch-size 1" in r["variant"]]
        if doc and b1 and doc[-1]["time_s"] > 2 * b1[-1]["time_s"]:
            out.append(f"Concurrency (3): `--api chat --concurrency {doc[-1]['concurrency']}` took {doc[-1]['time_s']:.1f} s "
                       f"for {doc[-1]['concurrency']} requests, with `--batch-size 1` {b1[-1]['time_s']:.1f} s; at 5 and "
                       f"10 it barely beat one at a time ({doc[0]['ratio_vs_sequential']:.2f}×, "
                       f"{doc[1]['ratio_vs_sequential']:.2f}×). Without `--batch-size`, a chat worker takes a call plan "
                       "of many rows and sends them one after another (`Dispatcher.run` loops over `plan.rows`), so far "
                       "fewer than C requests are in flight; with `--schedule static` one worker gets every row.")
    m = s.get("makespan")
    if m:
        dyn = [f for f in m["runs"] if f["schedule"] == "dynamic"]
        best = min(dyn, key=lambda f: f["makespan_s"])
        t = best["ranks"]["t_requests"]
        fast_end = max(t[1:3])
        so = m["solo"]
        cl = m.get("client_layer_fill") or {}
        dyn_cl = next((v for k, v in cl.items() if k.startswith("dynamic")), None)
        fix_cl = next((v for k, v in cl.items() if k.startswith("fixed")), None)
        one_cl = cl.get("one list")
        fill = best["fill_per_rank"]
        text = (f"Makespan (4): in the best default dynamic run the fast ranks 1–2 finished their requests at "
                f"{fast_end:.2f} s and the quarter-speed rank 3 at {t[3]:.2f} s (ideal {m['ideal_s']:.2f} s); engine "
                f"fill per rank {', '.join(f'{x:.2f}' for x in fill)} (rank 0's reads low: its `t_requests` ends "
                f"with the last rank). The slow rank served {best['ranks']['n_prompts'][3]} rows, its first share "
                f"(a fair share is {m['prompts'] * m['speeds'][3] / sum(m['speeds']):.0f}): a later chunk would wait "
                "behind its engine's queue longer than the others need to finish. One rank alone on one endpoint "
                f"reaches {so['dynamic_fill']:.2f} of the capacity of one list of the same prompts.")
        if dyn_cl and fix_cl and one_cl:
            text += (f" The client layer alone, without MPI, with the default 8 calls in flight: one list "
                     f"{one_cl['fill']:.2f}, fixed calls {fix_cl['fill']:.2f} ({fix_cl['calls']} calls), the dynamic "
                     f"schedule's sizing {dyn_cl['fill']:.2f} ({dyn_cl['calls']} calls). A list call frees its rows "
                     "only when its last prompt is done, so smaller calls with more in flight keep an engine fuller: "
                     "4 calls of ~96 (the earlier default) left each fast engine at ~0.88, 8 of ~48 at ~0.94.")
        text += (f" Our processes used {best['cpu_busy_fraction']:.0%} of the 2 cores; the machine as a whole (other "
                 f"jobs included) {'?' if best.get('machine_busy') is None else format(best['machine_busy'], '.0%')}.")
        out.append(text)
        tuned = [f for f in m["runs"] if "--batch-size" in f["schedule"]]
        if tuned:
            out.append(f"Makespan (4): `--batch-size 96 --concurrency 8` (768 rows in flight a rank, calls of 96) gave "
                       f"{tuned[0]['ideal_over_makespan']:.2f} of ideal: each rank's first share (9 calls' worth, "
                       f"{tuned[0]['ranks']['n_prompts'][3]} rows for the slow rank) is more than the slow endpoint "
                       "finishes in time.")
        st = [f for f in m["runs"] if f["schedule"] == "static"]
        if st:
            cpu = st[0]["ranks"]["cpu_s"]
            out.append(f"Makespan (4), static: ranks 1–2 finished after {st[0]['ranks']['t_requests'][1]:.1f} s and used "
                       f"{cpu[1]:.1f} and {cpu[2]:.1f} s of CPU in all, waiting for the slow rank in a sleeping barrier "
                       "(`Ibarrier` + `Test` + 1 ms sleeps). MPICH's blocking `Barrier` spins: in the run before it, "
                       "the same ranks used 14.3 and 13.7 s, taken from the ranks still working on these 2 cores "
                       "(static makespan then 17.56 s, 0.28 of ideal).")
    g = s.get("gather")
    if g and g.get("diag") and "round_rows" in g["diag"]:
        d = g["diag"]
        out.append(f"Gather + write (5): the write is {g['split']['write_s'] / g['best']['bare_s']:.2f}× the bare write "
                   f"(it also writes `finish_reason` and `error`, two more string columns of {g['rows']:,} rows each); "
                   f"the gather adds {g['split']['gather_s']:.2f} s, most of it rank 0 packing its own rows and "
                   f"waiting for the others' (packing one round: {max(d['pack_s_per_rank']):.2f} s a rank with 4 ranks "
                   f"on 2 cores); the `Igatherv` of one round moves {d['bytes'] / 2**20:,.0f} MB in "
                   f"{d['gatherv_s']:.2f} s.")
    return out
