#!/usr/bin/env python3
"""mpiswarm's benchmark: seven sections, each figure next to a reference measured in the same run.

One command, a few minutes on a 2-core machine, simulated vLLM endpoints on 127.0.0.1::

    python tools/bench.py                 # writes docs/bench.md and docs/bench.json
    python tools/bench.py --quick         # smaller sizes, about four minutes
    python tools/bench.py --only makespan,gather --md - --json /tmp/b.json

Sections (``--only`` takes their names):

``cpu``
    CPU µs per prompt of one rank against an instant endpoint vs a bare pipeline (JSONL +
    raw httpx list calls + h5py): ``tools/bench_cpu.py``'s ``measure``.
``batch``
    Aurora-Swarm's published batch-vs-single table: 20 prompts on 4 endpoints (4 MPI ranks,
    ``mpiexec``), and 10,000 prompts on 100 endpoints through mpiswarm's client layer from one
    process (100 MPI ranks do not fit 2 cores). HTTP requests are counted at the simulator.
``concurrency``
    5, 10, 50 chat requests at once against one simulated endpoint (``--api chat
    --concurrency C``): time per request must fall as concurrency rises.
``makespan``
    3 full-speed endpoints and one at a quarter (``--speeds 1,1,1,0.25``), 6,500 prompts on 4
    ranks, ``--schedule static`` vs ``dynamic``, against the ideal (prompts / total capacity),
    the capacity calibrated in the same run.
``gather``
    ``mpiswarm.gather.gather_results`` + ``mpiswarm.store.create_result_file`` of 1,000,000
    results on 4 ranks vs rank 0 writing the same arrays with bare h5py.
``scaling``
    Weak scaling at 1, 2, 4, 8 ranks with ``tools/scaling_study.py``.
``model``
    The scale model (:mod:`mpiswarm.bench.scale_model`): rank 0's time after the requests at
    Aurora's rank and prompt counts, both layouts, from constants measured here.

Every process it starts is stopped by PID (jobs by their process group) and every
measurement has a deadline.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from ..launch import cpu_seconds
from . import ROOT, child_env, run_bounded, source_digest, source_state
from .report import markdown, notes

MODEL = "sim-model"
SECTIONS = ("cpu", "batch", "concurrency", "makespan", "gather", "scaling", "model")

# --- published figures (../shared/background: Aurora-Swarm and the vLLama investigation) -----
PUBLISHED_BATCH = {"batch": {"time_s": 2.76, "prompts_per_s": 7.24, "requests": 4},
                   "single": {"time_s": 3.09, "prompts_per_s": 6.46, "requests": 20}, "speedup": 1.12}
PUBLISHED_CONCURRENCY = {  # concurrent requests -> seconds per request (total / requests)
    "custom vLLM wrapper": {5: 1.34, 10: 2.17},
    "Ollama": {5: 1.30, 10: 0.64},
}


# ============================================================================ helpers


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_prompts(path: str, n: int) -> str:
    """``n`` JSONL rows (the rows of a smaller file are the first rows of a larger one)."""
    from . import scaling_study

    scaling_study.write_prompts(path, n)
    return path


def cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine so far (Linux /proc/stat), every process counted."""
    try:
        with open("/proc/stat") as fh:
            values = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def machine_busy(before, after) -> float | None:
    """Fraction of the machine's CPU time used by anything (ours or other jobs) between two readings."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def sim_requests(urls) -> int:
    """``mpiswarm_sim:http_requests_total`` summed over the endpoints (completion calls)."""
    total = 0.0
    for url in urls:
        root = url.rstrip("/").removesuffix("/v1")
        with urllib.request.urlopen(root + "/metrics", timeout=30) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("mpiswarm_sim:http_requests_total"):
                    total += float(line.rsplit(" ", 1)[1])
    return int(total)


def start_sim(args: list) -> "object":
    from mpiswarm.sim import start_process

    sim = start_process([str(a) for a in ["--model", MODEL, *args]], timeout=60.0)
    log(f"simulator pid {sim.pid}: {' '.join(map(str, args))} ({len(sim.urls)} endpoint(s))")
    return sim


def run_job(n_ranks: int, args: list, timeout: float) -> dict:
    """``mpiexec -n N python -m mpiswarm ARGS`` in a session of its own, with a deadline;
    returns the exit code, the wall time seen from outside and the output's attributes."""
    from mpiswarm.launch import mpiswarm_command

    cmd = mpiswarm_command(n_ranks, [str(a) for a in args])
    ticks = cpu_ticks()
    load = os.getloadavg()[0]
    wall, out, _ = run_bounded(cmd, timeout)
    return {"cmd": cmd, "outside_wall_s": wall, "stdout": out, "machine_busy": machine_busy(ticks, cpu_ticks()),
            "load_before": load}


def file_figures(path: str) -> dict:
    """The phase times and per-rank table of a result file."""
    from mpiswarm.store import read_info

    info = read_info(path)
    a = info.attrs
    ranks = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in info.ranks.items()
             if k in ("n_prompts", "n_calls", "t_requests", "cpu_s", "max_rss_mb", "n_ok")}
    return {"n_prompts": int(a["n_prompts"]), "n_ok": int(a["n_ok"]), "complete": bool(a["complete"]),
            "times": {k[5:-2]: float(v) for k, v in a.items() if k.startswith("time_") and k.endswith("_s")},
            "ranks": ranks}


def job(n_ranks: int, inp: str, out: str, sim_args: list, extra: list, timeout: float) -> dict:
    """One ``mpiswarm run`` with its figures; the output file is removed afterwards."""
    res = run_job(n_ranks, ["run", inp, "-o", out, "--model", MODEL, *sim_args, "--restart", "-q", *extra], timeout)
    fig = file_figures(out)
    fig["outside_wall_s"] = res["outside_wall_s"]
    fig["machine_busy"] = res["machine_busy"]
    fig["load_before"] = res["load_before"]
    fig["launch_s"] = res["outside_wall_s"] - fig["times"]["total"]
    fig["args"] = [str(a) for a in extra]
    os.unlink(out)
    return fig


def endpoint_args(sim, n_ranks: int) -> list:
    if n_ranks == 1:
        return ["--endpoint", sim.urls[0]]
    return ["--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0]]


def r3(x):
    return None if x is None else round(float(x), 3)


# ============================================================================ 1. CPU
def bench_cpu(a, work: str) -> dict:
    from . import cpu

    sizes = [5000, 25000] if a.quick else [20000, 100000]
    repeat = 1 if a.quick else 4  # best of 4: other jobs on these 2 cores only ever add CPU
    sim = start_sim(["--time-scale", "0"])
    diag = {}
    try:
        res = cpu.measure(sizes, 1024, repeat, work, sim.urls[0], child_env())
        # diagnostic: the same mpiswarm command per schedule (measure runs the default, dynamic), with
        # its calls and request-phase wall time from the result file
        for schedule in ("static", "dynamic"):
            d = diag[schedule] = {"cpu_s": {}, "n_calls": {}, "requests_s": {}}
            for n in sizes:
                inp, out = os.path.join(work, f"in{n}.jsonl"), os.path.join(work, f"diag{n}.h5")
                d["cpu_s"][n] = cpu.child_cpu([sys.executable, "-m", "mpiswarm", "run", inp, "-o", out, "--model",
                                               MODEL, "--endpoint", sim.urls[0], "--max-tokens", "16", "--batch-size",
                                               "1024", "--schedule", schedule, "--quiet", "--restart"], child_env())
                fig = file_figures(out)
                d["n_calls"][n] = int(sum(fig["ranks"]["n_calls"]))
                d["requests_s"][n] = fig["times"]["requests"]
            d["us_per_prompt"] = (d["cpu_s"][sizes[1]] - d["cpu_s"][sizes[0]]) / (sizes[1] - sizes[0]) * 1e6
    finally:
        sim.stop()
    us = res["us_per_prompt"]
    log(f"cpu: bare {us['bare']:.2f} µs/prompt, mpiswarm {us['mpiswarm']:.2f} µs/prompt, ratio {res['ratio']:.2f}")
    return {"sizes": sizes, "repeat": repeat, "batch_size": 1024, "us_per_prompt": us, "ratio": res["ratio"],
            "cpu_s": res["cpu_s"], "goal": 1.5, "holds": res["ratio"] <= 1.5, "by_schedule": diag}


# ============================================================================ 2. batch vs single
async def _client_layer(urls, prompts_per_endpoint: int, mode: str, max_tokens: int) -> dict:
    """mpiswarm's per-rank client layer (Dispatcher + WorkSource + EndpointPool, i.e. what a
    rank runs between scatter and gather) for every endpoint at once, in one event loop."""
    from contextlib import AsyncExitStack

    import numpy as np

    from . import scaling_study
    from mpiswarm.balance import Chunk
    from mpiswarm.client import ClientOptions
    from mpiswarm.control import WorkSource
    from mpiswarm.dispatch import Dispatcher, EndpointPool
    from mpiswarm.records import RankStats

    single = mode == "single"
    options = ClientOptions(model=MODEL, batch_size=1 if single else None,
                            concurrency=prompts_per_endpoint if single else 4)
    topics = scaling_study.TOPICS

    async def one(dispatcher, source):
        await dispatcher.run(source, {"max_tokens": max_tokens})
        return dispatcher.stats, sum(int(c.results.ok.sum()) for c in source.chunks)

    async with AsyncExitStack() as stack:
        # set-up outside the timed part: a rank makes its client once, before its first call
        t0 = time.perf_counter()
        work = []
        for i, url in enumerate(urls):
            index = np.arange(i * prompts_per_endpoint, (i + 1) * prompts_per_endpoint, dtype=np.int64)
            prompts = [f"Question {k}: what does the {topics[k % len(topics)]} G{k % 997} do in the cell?"
                       for k in index.tolist()]
            source = WorkSource(batch_size=options.batch_size, concurrency=options.calls_in_flight(), cap=None)
            source.add(Chunk.new(index, prompts, [""] * len(prompts), 1, i))
            pool = EndpointPool([url], options, stack)
            await pool.current()
            work.append((Dispatcher(pool, RankStats(rank=i, host="", endpoint=url)), source))
        setup_s = time.perf_counter() - t0
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        done = await asyncio.gather(*(one(d, s) for d, s in work))
        seconds = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
    return {"time_s": seconds, "n_ok": sum(d[1] for d in done), "n_calls": sum(d[0].n_calls for d in done),
            "cpu_s": cpu_s, "setup_s": setup_s}


async def _fill(url: str, n: int, max_tokens: int) -> dict:
    """One endpoint, one rank's client layer alone (no MPI, no control plane), the default calls in
    flight: prompts/s with one list, with the dynamic schedule's call sizing once the rank's source
    is exhausted (the end shared out), and with fixed calls of that size."""
    from contextlib import AsyncExitStack

    import numpy as np
    from . import scaling_study

    from mpiswarm.balance import Chunk, call_cap
    from mpiswarm.client import ClientOptions
    from mpiswarm.control import WorkSource
    from mpiswarm.dispatch import Dispatcher, EndpointPool
    from mpiswarm.records import RankStats

    concurrency = ClientOptions(model=MODEL).calls_in_flight()  # the default for lists
    cap = call_cap(256, concurrency)
    out = {}
    for name, (c, bs) in {"one list": (None, None), f"dynamic sizing (cap {cap})": (cap, None),
                          f"fixed {cap}": (None, cap)}.items():
        options = ClientOptions(model=MODEL, concurrency=concurrency, batch_size=bs)
        async with AsyncExitStack() as stack:
            pool = EndpointPool([url], options, stack)
            await pool.current()
            source = WorkSource(batch_size=bs, concurrency=concurrency, cap=c)
            topics = scaling_study.TOPICS  # the makespan job's prompts (its first n rows)
            source.add(Chunk.new(np.arange(n), [f"Question {i}: what does the {topics[i % len(topics)]} G{i % 997} "
                                                "do in the cell?" for i in range(n)], [""] * n, 1, 0))
            dispatcher = Dispatcher(pool, RankStats(rank=0, host="", endpoint=url))
            t0 = time.perf_counter()
            await dispatcher.run(source, {"max_tokens": max_tokens})
            out[name] = {"rate": n / (time.perf_counter() - t0), "calls": dispatcher.stats.n_calls}
    return out


def fill_child(argv) -> int:
    """``bench.py _fill URL N MAX_TOKENS``."""
    print(json.dumps(asyncio.run(_fill(argv[0], int(argv[1]), int(argv[2])))))
    return 0


def client_layer_child(argv) -> int:
    """``bench.py _client_layer URLS_FILE PROMPTS_PER_ENDPOINT MODE MAX_TOKENS``: one measurement."""
    urls_file, per, mode, max_tokens = argv
    with open(urls_file) as fh:
        urls = fh.read().split()
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    res = asyncio.run(_client_layer(urls, int(per), mode, int(max_tokens)))
    print(json.dumps(res))
    return 0


def bench_batch(a, work: str) -> dict:
    out = {}
    # (a) the published case: 20 prompts, 4 endpoints, 4 MPI ranks, one list per endpoint vs one
    # request per prompt. Engine time set so one list of 5 takes about the published 2.76 s.
    ts, max_tokens, repeat = 6.0, 64, (1 if a.quick else 3)
    inp = write_prompts(os.path.join(work, "in20.jsonl"), 20)
    modes = {
        "batch (one list per endpoint)": ["--schedule", "static"],
        "single (one request per prompt)": ["--schedule", "static", "--batch-size", "1", "--concurrency", "20"],
        "batch, default schedule (dynamic)": [],
    }
    sim = start_sim(["--count", 4, "--time-scale", ts])
    runs = {m: [] for m in modes}
    try:
        for _ in range(repeat):  # interleaved
            for m, extra in modes.items():
                before = sim_requests(sim.urls)
                fig = job(4, inp, os.path.join(work, "b.h5"), endpoint_args(sim, 4),
                          ["--max-tokens", max_tokens, *extra], a.timeout)
                fig["http_requests"] = sim_requests(sim.urls) - before
                runs[m].append(fig)
    finally:
        sim.stop()
    rows = []
    for m, figs in runs.items():
        t = statistics.median(f["times"]["requests"] for f in figs)
        rows.append({"mode": m, "args": figs[0]["args"], "time_s": t, "prompts_per_s": 20 / t,
                     "http_requests": figs[0]["http_requests"], "wall_s": statistics.median(f["times"]["total"]
                                                                                           for f in figs),
                     "launch_s": statistics.median(f["launch_s"] for f in figs),
                     "runs_time_s": [f["times"]["requests"] for f in figs]})
    single_t = rows[1]["time_s"]
    for r in rows:
        r["speedup_vs_single"] = single_t / r["time_s"]
    out["small"] = {"prompts": 20, "endpoints": 4, "ranks": 4, "time_scale": ts, "max_tokens": max_tokens,
                    "repeat": repeat, "rows": rows, "published": PUBLISHED_BATCH}
    log("batch 20/4: " + ", ".join(f"{r['mode']}: {r['time_s']:.2f} s, {r['http_requests']} req" for r in rows))

    # (b) 10,000 prompts on 100 endpoints, mpiswarm's client layer from one process.
    n_ep, per = (100, 20) if a.quick else (100, 100)
    # engine time: ~0.19 s per unit of time scale for a list of 100 at 16 tokens (~19 s at 100)
    ts_big, max_tokens = (40.0, 16) if a.quick else (100.0, 16)
    sim = start_sim(["--count", n_ep, "--time-scale", ts_big])
    urls_file = os.path.join(work, "urls.txt")
    with open(urls_file, "w") as fh:
        fh.write("\n".join(sim.urls))
    rows = []
    try:
        for mode in ("batch", "single"):
            before, cpu0 = sim_requests(sim.urls), cpu_seconds(sim.pid)
            cmd = [sys.executable, "-m", __spec__.name, "_client_layer", urls_file, str(per), mode,
                   str(max_tokens)]
            proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=a.timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"client layer {mode}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            cpu1 = cpu_seconds(sim.pid)
            res.update(mode=mode, http_requests=sim_requests(sim.urls) - before,
                       prompts_per_s=n_ep * per / res["time_s"],
                       sim_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0)
            if res["n_ok"] != n_ep * per:
                raise RuntimeError(f"client layer {mode}: {res['n_ok']} of {n_ep * per} answered")
            rows.append(res)
            log(f"batch {n_ep * per}/{n_ep} {mode}: {res['time_s']:.2f} s, {res['http_requests']} requests, "
                f"client CPU {res['cpu_s']:.1f} s, simulator CPU {res['sim_cpu_s']:.1f} s")
    finally:
        sim.stop()
    for r in rows:
        r["speedup_vs_single"] = rows[1]["time_s"] / r["time_s"]
    # the engine time alone: one list per endpoint, no client in the way
    out["large"] = {"prompts": n_ep * per, "endpoints": n_ep, "time_scale": ts_big, "max_tokens": max_tokens,
                    "rows": rows}
    return out


# ============================================================================ 3. concurrency
def bench_concurrency(a, work: str) -> dict:
    # --max-tokens 8: most answers run the full 8 tokens, so one request alone takes ~1.3 s at
    # --time-scale 16 (the published per-request times were 0.6-2.2 s)
    ts, max_tokens, n_seq = 16.0, 8, 5
    levels = [5, 10, 50]
    repeat = 1 if a.quick else 2
    variants = {"--api chat --concurrency C (as documented)": ["--api", "chat", "--chat-route", "single"],
                "--api chat --concurrency C --batch-size 1": ["--api", "chat", "--chat-route", "single", "--batch-size", "1"]}
    sim = start_sim(["--time-scale", ts])
    rows = []

    def measure(c: int, n: int, name: str, extra: list) -> dict:
        inp = write_prompts(os.path.join(work, f"conc{n}.jsonl"), n)
        figs = []
        for _ in range(repeat):
            before = sim_requests(sim.urls)
            fig = job(1, inp, os.path.join(work, "c.h5"), endpoint_args(sim, 1),
                      ["--max-tokens", max_tokens, "--concurrency", c, *extra], a.timeout)
            fig["http_requests"] = sim_requests(sim.urls) - before
            figs.append(fig)
        t = min(f["times"]["requests"] for f in figs)
        row = {"variant": name, "concurrency": c, "requests": figs[0]["http_requests"], "time_s": t,
               "s_per_request": t / n, "runs_time_s": [f["times"]["requests"] for f in figs]}
        log(f"concurrency {c} [{name}]: {n} requests in {t:.2f} s, {t / n:.3f} s/request")
        return row

    try:
        # the reference: the same kind of request, one at a time (5 in a row)
        ref = measure(1, n_seq, "one at a time (--api chat --concurrency 1)", ["--api", "chat", "--chat-route", "single", "--batch-size", "1"])
        rows.append(ref)
        for c in levels:
            for name, extra in variants.items():
                rows.append(measure(c, c, name, extra))
    finally:
        sim.stop()
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        per = [ref["s_per_request"]] + [r["s_per_request"] for r in mine]
        falls = all(y < x for x, y in zip(per, per[1:]))
        for r in mine:
            r["ratio_vs_sequential"] = r["s_per_request"] / ref["s_per_request"]
            r["falls"] = falls
    ref["ratio_vs_sequential"] = 1.0
    return {"time_scale": ts, "max_tokens": max_tokens, "repeat": repeat, "sequential_requests": n_seq,
            "rows": rows,
            "published_s_per_request": {k: {str(c): v for c, v in d.items()} for k, d in PUBLISHED_CONCURRENCY.items()}}


# ============================================================================ 4. makespan
def list_rate(url: str, prompts: list, max_tokens: int) -> float:
    """Prompts/s of one endpoint answering ``prompts`` as one list (its capacity on exactly
    these prompts: the list keeps the engine full, nothing else runs)."""
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover
        import httpx

    n = len(prompts)
    t0 = time.perf_counter()
    resp = httpx.post(url + "/completions", json={"model": MODEL, "prompt": prompts, "max_tokens": max_tokens},
                      timeout=600, trust_env=False)
    dt = time.perf_counter() - t0
    resp.raise_for_status()
    if len(resp.json()["choices"]) != n:
        raise RuntimeError("calibration: wrong number of choices")
    return n / dt


def bench_makespan(a, work: str) -> dict:
    max_tokens, target, n_prompts = 16, 400.0, 6500
    n_cal = 1500 if a.quick else 3000
    speeds = [1.0, 1.0, 1.0, 0.25]
    inp = write_prompts(os.path.join(work, "in6500.jsonl"), n_prompts)
    with open(inp, encoding="utf-8") as fh:
        prompts = [json.loads(line)["prompt"] for line in fh]
    # calibrate on the job's own prompts (the simulator's time depends on their lengths): one
    # full-speed endpoint alone at time scale 1, then scale to ~400 prompts/s
    sim = start_sim(["--time-scale", 1])
    try:
        c1 = list_rate(sim.urls[0], prompts[:n_cal], max_tokens)
    finally:
        sim.stop()
    ts = round(c1 / target, 3)
    log(f"makespan: {c1:.0f} prompts/s at --time-scale 1 -> --time-scale {ts}")
    sim = start_sim(["--count", 4, "--time-scale", ts, "--speeds", ",".join(map(str, speeds))])
    runs = []
    try:
        # the capacity: every prompt of the job in one list on a full-speed endpoint
        c = list_rate(sim.urls[0], prompts, max_tokens)
        c_first = list_rate(sim.urls[0], prompts[:n_cal], max_tokens)  # for the diagnostics on the first rows
        capacity = c * sum(speeds)
        ideal = n_prompts / capacity
        log(f"makespan: full-speed endpoint {c:.0f} prompts/s; capacity {capacity:.0f} prompts/s; ideal {ideal:.2f} s")
        # diagnostic: one rank alone on one full-speed endpoint, default options: how full mpiswarm keeps
        # one engine (its prompts/s over the list calibration), with no balancing involved
        inp1 = write_prompts(os.path.join(work, f"in{n_cal}.jsonl"), n_cal)
        solo = job(1, inp1, os.path.join(work, "solo.h5"), endpoint_args(sim, 1), ["--max-tokens", max_tokens],
                   a.timeout)
        solo_rate = n_cal / solo["times"]["requests"]
        solo_static = job(1, inp1, os.path.join(work, "solo.h5"), endpoint_args(sim, 1),
                          ["--max-tokens", max_tokens, "--schedule", "static"], a.timeout)
        solo_static_rate = n_cal / solo_static["times"]["requests"]
        solo_fixed = job(1, inp1, os.path.join(work, "solo.h5"), endpoint_args(sim, 1),
                         ["--max-tokens", max_tokens, "--batch-size", 96], a.timeout)
        solo_fixed_rate = n_cal / solo_fixed["times"]["requests"]
        log(f"makespan: one rank alone, {n_cal} prompts: {solo_rate:.0f} prompts/s dynamic ({solo_rate / c_first:.2f} of c), "
            f"{solo_static_rate:.0f} static, one list ({solo_static_rate / c_first:.2f} of c), "
            f"{solo_fixed_rate:.0f} with --batch-size 96 ({solo_fixed_rate / c_first:.2f} of c)")
        proc = subprocess.run([sys.executable, "-m", __spec__.name, "_fill", sim.urls[0], str(n_cal),
                               str(max_tokens)], env=child_env(), capture_output=True, text=True, timeout=a.timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"fill diagnostic: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        fill = json.loads(proc.stdout.strip().splitlines()[-1])
        for v in fill.values():
            v["fill"] = v["rate"] / c_first
        log("makespan: client layer alone: " + ", ".join(f"{k} {v['rate']:.0f} prompts/s ({v['calls']} calls)"
                                                        for k, v in fill.items()))
        tuned = ["--batch-size", "96", "--concurrency", "8"]  # diagnostic: deeper in flight, fixed call size
        order = [("dynamic", []), ("static", []), ("dynamic", tuned)] + ([] if a.quick else [("dynamic", [])])
        for schedule, extra in order:
            cpu0 = cpu_seconds(sim.pid)
            fig = job(4, inp, os.path.join(work, "m.h5"), endpoint_args(sim, 4),
                      ["--max-tokens", max_tokens, "--schedule", schedule, *extra], a.timeout)
            cpu1 = cpu_seconds(sim.pid)
            fig["schedule"] = schedule if not extra else f"{schedule} {' '.join(extra)}"
            fig["sim_cpu_s"] = None if cpu0 is None else cpu1 - cpu0
            mk = fig["times"]["requests"]
            fig["makespan_s"] = mk
            fig["ideal_over_makespan"] = ideal / mk
            rk = fig["ranks"]
            fig["fill_per_rank"] = [p_ / t_ / (c * sp) if t_ > 0 else None
                                    for p_, t_, sp in zip(rk["n_prompts"], rk["t_requests"], speeds)]
            busy = sum(fig["ranks"]["cpu_s"]) + (fig["sim_cpu_s"] or 0)
            fig["cpu_busy_fraction"] = busy / (2 * fig["outside_wall_s"])
            runs.append(fig)
            log(f"makespan {schedule}: requests {mk:.2f} s (ideal/makespan {ideal / mk:.2f}), total "
                f"{fig['times']['total']:.2f} s, outside {fig['outside_wall_s']:.2f} s; per rank prompts "
                f"{fig['ranks']['n_prompts']} t_requests {[round(x, 2) for x in fig['ranks']['t_requests']]}")
    finally:
        sim.stop()
    best = {}
    for f in runs:
        if f["schedule"] not in best or f["makespan_s"] < best[f["schedule"]]["makespan_s"]:
            best[f["schedule"]] = f
    nominal_ideal = n_prompts / (target * sum(speeds))
    dyn = best["dynamic"]
    issue = {"nominal_ideal_s": nominal_ideal, "limit_s": nominal_ideal / 0.9, "requests_s": dyn["makespan_s"],
             "launch_and_other_s": dyn["outside_wall_s"] - dyn["makespan_s"],
             "holds": dyn["makespan_s"] <= nominal_ideal / 0.9}
    return {"prompts": n_prompts, "speeds": speeds, "max_tokens": max_tokens, "calibration_prompts": n_cal,
            "rate_at_time_scale_1": c1, "time_scale": ts, "full_speed_rate": c, "capacity": capacity,
            "solo": {"prompts": n_cal, "dynamic_rate": solo_rate, "dynamic_fill": solo_rate / c_first,
                     "static_rate": solo_static_rate, "static_fill": solo_static_rate / c_first,
                     "dynamic_calls": solo["ranks"]["n_calls"][0], "fixed96_rate": solo_fixed_rate,
                     "fixed96_fill": solo_fixed_rate / c_first, "fixed96_calls": solo_fixed["ranks"]["n_calls"][0]},
            "client_layer_fill": fill,
            "ideal_s": ideal, "runs": runs, "best": {k: {"makespan_s": v["makespan_s"],
                                                         "ideal_over_makespan": v["ideal_over_makespan"]}
                                                     for k, v in best.items()},
            "goal_dynamic": 0.9, "holds": best["dynamic"]["ideal_over_makespan"] >= 0.9, "issue_check": issue}


# ============================================================================ 5. gather + write
def gather_child(argv) -> int:
    """Run under ``mpiexec -n R``: ``bench.py _gather OUT_DIR ROWS_PER_RANK ANSWER_CHARS REPEAT``."""
    out_dir, rows_per_rank, chars, repeat = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    import random
    from contextlib import nullcontext

    import h5py
    import numpy as np
    from mpi4py import MPI

    from mpiswarm.gather import gather_in_rounds, gather_stats
    from mpiswarm.records import RankStats, ResultColumns
    from mpiswarm.sim import WORDS
    from mpiswarm.store import STR, create_result_file

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = rows_per_rank * size
    # answers: ~`chars` characters of the simulator's words (Latin-1 ones included: multi-byte UTF-8,
    # one byte a character in CPython), each row a different slice of one long text
    rng = random.Random(rank)
    words = [w for w in WORDS if max(map(ord, w)) < 256]
    text = " ".join(rng.choice(words) for _ in range(chars))  # ~5 chars a word: 5 * chars long
    span = len(text) - chars - 100
    index = np.arange(rank * rows_per_rank, (rank + 1) * rows_per_rank, dtype=np.int64)

    # as the dynamic schedule leaves them: calls of 48 rows dealt to the ranks in turn
    dealt = np.flatnonzero((np.arange(n) // 48) % size == rank).astype(np.int64)

    def build(index=index) -> ResultColumns:
        local = ResultColumns.pending(index, 1, rank)
        local.completion = [text[(i * 7919) % span: (i * 7919) % span + chars - 50 + i % 100] for i in index.tolist()]
        local.finish_reason = ["stop" if i % 3 else "length" for i in range(len(index))]
        local.error = [""] * len(index)
        local.ok[:] = True
        local.done[:] = True
        local.prompt_tokens[:] = -1
        local.completion_tokens[:] = -1
        local.latency_s[:] = 1.5
        return local

    prompts = ids = None
    if rank == 0:
        prompts = [f"Question {i}: what does the gene G{i % 997} do in the cell? Answer in detail."
                   for i in range(n)]
        ids = [f"q{i:08d}" for i in range(n)]
    stats = RankStats(rank=rank, host=MPI.Get_processor_name(), endpoint="http://127.0.0.1:8000/v1",
                      n_prompts=rows_per_rank, n_ok=rows_per_rank, n_calls=rows_per_rank // 256)
    from mpiswarm import _mpi
    from mpiswarm.packed import pack_message
    from mpiswarm.layout import GATHER_ROWS_PER_ROUND

    res = {"mpiswarm_s": [], "gather_s": [], "write_s": [], "bare_s": [], "rounds": 0}
    for k in range(repeat):
        local = build()
        if k == 0 and rank == 0:
            res["rss_before_gather_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        _mpi.barrier_sleeping(comm)
        # what the runner does: gather in rounds, rank 0 writes each round as it comes
        t0 = MPI.Wtime()
        write_s = 0.0
        rounds = 0
        with create_result_file(os.path.join(out_dir, "mpiswarm.h5"), n, 1) if rank == 0 else nullcontext() as out:
            for part in gather_in_rounds(local, GATHER_ROWS_PER_ROUND, comm):
                w0 = MPI.Wtime()
                out.write_rows(prompts, ids, part)
                write_s += MPI.Wtime() - w0
                rounds += 1
            all_stats = gather_stats(stats, comm)
            if rank == 0:
                w0 = MPI.Wtime()
                out.write_ranks(all_stats)
                out.set_attrs({"model": MODEL, "n_ranks": size, "complete": True, "params": {"bench": True}})
        if rank == 0:
            t2 = MPI.Wtime()
            write_s += t2 - w0  # the ranks table, the attributes and closing the file
            path = os.path.join(out_dir, "mpiswarm.h5")
            res["mpiswarm_s"].append(t2 - t0)
            res["gather_s"].append(t2 - t0 - write_s)
            res["write_s"].append(write_s)
            res["rounds"] = rounds
            if k == 0:
                res["rss_after_mpiswarm_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                res["file_mb"] = os.path.getsize(path) / 2**20
                res["answer_bytes_mean"] = sum(len(s.encode()) for s in local.completion[:10000]) / 10000
            os.unlink(path)
        del local
        _mpi.barrier_sleeping(comm)
        if rank == 0:
            # bare: rank 0 alone writes the same arrays with h5py (every rank's answers: the same
            # generator, so rank r's rows are rebuilt here outside the timing)
            everything = [None] * n
            for r in range(size):
                rng = random.Random(r)
                text_r = " ".join(rng.choice(words) for _ in range(chars))
                span_r = len(text_r) - chars - 100
                for i in range(r * rows_per_rank, (r + 1) * rows_per_rank):
                    everything[i] = text_r[(i * 7919) % span_r: (i * 7919) % span_r + chars - 50 + i % 100]
            numbers = {"ok": np.ones(n, bool), "rank": np.repeat(np.arange(size, dtype=np.int32), rows_per_rank),
                       "prompt_tokens": np.full(n, -1, np.int64), "completion_tokens": np.full(n, -1, np.int64),
                       "latency_s": np.full(n, 1.5)}
            path = os.path.join(out_dir, "bare.h5")
            t0 = time.perf_counter()
            with h5py.File(path, "w") as f:
                for name, values in (("prompt", prompts), ("completion", everything), ("custom_id", ids)):
                    arr = np.empty(len(values), dtype=object)
                    arr[:] = values
                    f.create_dataset(name, data=arr, dtype=STR)
                for name, values in numbers.items():
                    f.create_dataset(name, data=values)
            res["bare_s"].append(time.perf_counter() - t0)
            os.unlink(path)
            del everything
        _mpi.barrier_sleeping(comm)
    # the virtual layout (--layout virtual): every rank writes its own block to a part file, the
    # rows reaching it from whichever ranks hold them (dealt as the dynamic schedule leaves them)
    from mpiswarm.layout import write_parts
    from mpiswarm.store import create_virtual_file, remove_stale_parts

    res["virtual_s"], res["virtual_write_s"] = [], []
    target = os.path.join(out_dir, "virtual.h5")
    for k in range(repeat):
        local = build(dealt)
        _mpi.barrier_sleeping(comm)
        t0 = MPI.Wtime()
        tally, part_write_s, parts, reasoning = write_parts(target, n, 1, local, prompts, ids, comm)
        all_stats = gather_stats(stats, comm)
        if rank == 0:
            with create_virtual_file(target, n, 1, parts, reasoning) as out:
                out.n_ok = tally.ok
                out.write_ranks(all_stats)
                out.set_attrs({"model": MODEL, "n_ranks": size, "complete": True, "params": {"bench": True}})
            res["virtual_s"].append(MPI.Wtime() - t0)
        writes = comm.gather(part_write_s, root=0)
        if rank == 0:
            res["virtual_write_s"].append(writes)
            if k == 0:
                res["virtual_parts_mb"] = sum(os.path.getsize(os.path.join(out_dir, p)) for p, _, c in parts if c) / 2**20
            remove_stale_parts(target, keep=[])
            os.unlink(target)
        del local
        _mpi.barrier_sleeping(comm)
    peak = comm.gather(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, root=0)
    # where the gather's time goes, one round's steps timed alone: packing one round's rows on
    # every rank (mpiswarm.packed.pack_message), the Igatherv of the messages
    local = build()
    block = GATHER_ROWS_PER_ROUND // size
    _mpi.barrier_sleeping(comm)
    t0 = MPI.Wtime()
    message = pack_message(local, 0, block)
    t_pack = comm.gather(MPI.Wtime() - t0, root=0)
    _mpi.barrier_sleeping(comm)
    t0 = MPI.Wtime()
    buffer, _ = _mpi.gatherv_bytes(message, comm)
    t_gatherv = MPI.Wtime() - t0
    if rank == 0:
        res["diag"] = {"round_rows": block * size, "pack_s_per_rank": t_pack, "gatherv_s": t_gatherv,
                       "bytes": int(len(buffer))}
        res["peak_rss_mb_per_rank"] = peak
        print("BENCH-GATHER " + json.dumps(res), flush=True)
    return 0


def bench_gather(a, work: str) -> dict:
    ranks = 4
    rows, chars, repeat = (25000, 1000, 1) if a.quick else (250000, 1000, 3)
    from mpiswarm.launch import find_mpiexec, kill_job

    cmd = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", __spec__.name, "_gather", work, str(rows),
           str(chars), str(repeat)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=a.timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc.pid)
        proc.communicate()
        raise RuntimeError(f"gather benchmark: no end within {a.timeout} s (killed)")
    if proc.returncode != 0:
        raise RuntimeError(f"gather benchmark: exit {proc.returncode}\n{err[-3000:]}")
    line = next(l for l in out.splitlines() if l.startswith("BENCH-GATHER "))
    res = json.loads(line.split(" ", 1)[1])
    best = {k: min(res[k]) for k in ("mpiswarm_s", "gather_s", "write_s", "bare_s", "virtual_s")}
    # the pair of the fastest mpiswarm round, for the split
    i = res["mpiswarm_s"].index(best["mpiswarm_s"])
    res.update(ranks=ranks, rows=rows * ranks, answer_chars=chars, repeat=repeat, best=best,
               split={"gather_s": res["gather_s"][i], "write_s": res["write_s"][i]},
               ratio=best["mpiswarm_s"] / best["bare_s"], goal=1.5, wall_s=time.perf_counter() - t0)
    res["holds"] = res["ratio"] <= 1.5
    res["virtual_ratio"] = best["virtual_s"] / best["bare_s"]
    res["virtual_split"] = res["virtual_write_s"][res["virtual_s"].index(best["virtual_s"])]
    log(f"gather: mpiswarm {best['mpiswarm_s']:.2f} s (gather {res['split']['gather_s']:.2f} + write "
        f"{res['split']['write_s']:.2f}), virtual layout {best['virtual_s']:.2f} s, bare h5py {best['bare_s']:.2f} s, "
        f"ratio {res['ratio']:.2f} (virtual {res['virtual_ratio']:.2f}); rank 0 peak {res['rss_after_mpiswarm_mb']:.0f} MB")
    return res


# ============================================================================ 6. weak scaling
def bench_scaling(a, work: str) -> dict:
    from . import scaling_study
    from mpiswarm.scaling import load_study

    ranks = [1, 2, 4] if a.quick else [1, 2, 4, 8]
    per, ts = (64, 4.0) if a.quick else (256, 8.0)
    out_dir = os.path.join(work, "scaling")
    argv = ["--ranks", *map(str, ranks), "--prompts-per-rank", str(per), "--time-scale", str(ts), "--out-dir", out_dir,
            "--report", os.path.join(work, "scaling.md"), "--plot", os.path.join(work, "scaling.png"),
            "--timeout", str(a.timeout)]
    code = scaling_study.main(argv)
    if code != 0:
        raise RuntimeError(f"tools/scaling_study.py exited {code}")
    study = load_study([os.path.join(out_dir, f"out_{r}.h5") for r in ranks]).as_dict()
    base = study["runs"][0]
    rows = []
    for run in study["runs"]:
        rows.append({"ranks": run["ranks"], "prompts": run["prompts"], "wall_s": run["wall_s"],
                     "requests_s": run["requests_s"], "prompts_per_s": run["prompts_per_s"],
                     "efficiency": run["efficiency"],
                     "requests_efficiency": base["requests_s"] / run["requests_s"],
                     "imbalance": run["rank_requests_s"]["max_over_mean"], "phases_s": run["phases_s"]})
    log("scaling: " + ", ".join(f"{r['ranks']} ranks {r['efficiency']:.0%}" for r in rows))
    return {"ranks": ranks, "prompts_per_rank": per, "time_scale": ts, "max_tokens": 64, "batch_size": 64,
            "rows": rows}


# ============================================================================ 7. scale model
def bench_model(a, work: str) -> dict:
    from . import scale_model

    res = scale_model.model(work, a.timeout)
    t = {(r["ranks"], r["prompts"]): r for r in res["table"]}
    log("model: rank 0 after the requests, s (single / virtual): " + ", ".join(
        f"{r:,} ranks {n:,} prompts {v['after_requests_s']:.0f} / {v['virtual_after_requests_s']:.0f}"
        for (r, n), v in t.items()))
    return res


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_client_layer":
        return client_layer_child(argv[1:])
    if argv and argv[0] == "_fill":
        return fill_child(argv[1:])
    if argv and argv[0] == "_gather":
        return gather_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (about four minutes)")
    p.add_argument("--md", default=os.path.join(ROOT, "docs", "bench.md"), help="markdown report ('-': stdout)")
    p.add_argument("--json", default=os.path.join(ROOT, "docs", "bench.json"), help="JSON figures")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {','.join(SECTIONS)}")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one measurement may take (default 300)")
    p.add_argument("--work-dir", default=None, help="inputs and result files (default: a temporary directory)")
    p.add_argument("--render", metavar="JSON", help="only rewrite the markdown from an earlier run's JSON")
    a = p.parse_args(argv)
    if a.render:
        with open(a.render, encoding="utf-8") as fh:
            res = json.load(fh)
        res["notes"] = notes(res)
        text = markdown(res)
        if a.md == "-":
            print(text)
        else:
            with open(a.md, "w", encoding="utf-8") as fh:
                fh.write(text)
        return 0
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = [x for x in only if x not in SECTIONS]
    if bad:
        p.error(f"unknown sections {bad}; choose from {','.join(SECTIONS)}")
    os.environ.update({k: v for k, v in child_env().items() if k in ("NO_PROXY", "no_proxy")})
    funcs = {"cpu": bench_cpu, "batch": bench_batch, "concurrency": bench_concurrency, "makespan": bench_makespan,
             "gather": bench_gather, "scaling": bench_scaling, "model": bench_model}
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_before = os.getloadavg()[0]
    source = source_state()
    res = {"sections": {}, "errors": {}, "section_wall_s": {}}
    with tempfile.TemporaryDirectory(prefix="mpiswarm-bench-") as tmp:
        work = a.work_dir or tmp
        os.makedirs(work, exist_ok=True)
        for name in only:
            log(f"section {name}")
            t = time.perf_counter()
            sub = os.path.join(work, name)
            os.makedirs(sub, exist_ok=True)
            try:
                res["sections"][name] = funcs[name](a, sub)
            except Exception as exc:  # a failed section is reported, the others still run
                res["errors"][name] = f"{type(exc).__name__}: {exc}"
                log(f"section {name} FAILED: {exc}")
            res["section_wall_s"][name] = time.perf_counter() - t
    if source_digest() != source["digest"]:
        res["errors"]["source"] = ("mpiswarm's source changed while the benchmark ran: the jobs started "
                                   "after the change ran other code than those before it; run it again "
                                   "on a tree nobody edits meanwhile")
        log(f"FAILED: {res['errors']['source']}")
    res["meta"] = {"command": shlex.join(["python", "tools/bench.py", *argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
                   "started": started, "commit": source["commit"], "uncommitted": source["uncommitted"],
                   "cpus": os.cpu_count(), "python": platform.python_version(), "quick": a.quick,
                   "load_before": load_before, "load_after": os.getloadavg()[0], "wall_s": time.perf_counter() - t0}
    res["notes"] = notes(res)
    text = markdown(res)
    if a.md == "-":
        print(text)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(a.md)), exist_ok=True)
        with open(a.md, "w", encoding="utf-8") as fh:
            fh.write(text)
    with open(a.json, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1, default=float)
    log(f"done in {res['meta']['wall_s']:.0f} s: {a.md}, {a.json}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
