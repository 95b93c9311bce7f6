#!/usr/bin/env python3
"""A weak-scaling study of mpiswarm on one machine: simulated vLLM endpoints, real mpiexec jobs.

Starts one simulator process serving max(--ranks) endpoints on consecutive loopback ports
(``mpiswarm.sim.start_process``), then for each rank count R runs exactly what a user runs::

    mpiexec -n R python -m mpiswarm run in_R.jsonl -o OUT_R.h5 --model sim-model \\
        --endpoint 'http://127.0.0.1:{port}/v1' --base-port P --max-tokens M --batch-size B

with R x --prompts-per-rank prompts (the first rows of one generated prompt set), so every
rank always has the same work: weak scaling. The simulator's --time-scale stretches its
continuous-batching time model so the endpoints' time dominates (a few seconds per slice),
as on a real machine where the GPU, not the client, is the bottleneck. Then it writes the
report and the plot with ``mpiswarm scaling`` and stops the simulator (by PID).

Usage (from a clone; defaults reproduce docs/scaling.md and docs/scaling.png)::

    python tools/scaling_study.py --ranks 1 2 4 8 --prompts-per-rank 256 --time-scale 8 \\
        --out-dir scaling-runs --report docs/scaling.md --plot docs/scaling.png
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

#: the checkout this package lives in; children import this package from it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "sim-model"
TOPICS = ["gene", "protein", "cell", "enzyme", "pathway", "membrane", "ribosome", "mutation"]


def write_prompts(path: str, n: int) -> None:
    """``n`` JSONL rows; the rows of a smaller file are the first rows of a larger one."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            fh.write(json.dumps({"custom_id": f"q{i:07d}",
                                 "prompt": f"Question {i}: what does the {topic} G{i % 997} do in the cell?"}) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8], help="rank counts (default 1 2 4 8)")
    p.add_argument("--prompts-per-rank", type=int, default=256, help="default 256")
    p.add_argument("--time-scale", type=float, default=8.0,
                   help="simulator time scale (default 8: about 6 s of endpoint time per rank slice)")
    p.add_argument("--max-tokens", type=int, default=64, help="default 64")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per call (default 64)")
    p.add_argument("--out-dir", default="scaling-runs", help="where the inputs and result files go")
    p.add_argument("--report", default="docs/scaling.md", help="markdown report (default docs/scaling.md)")
    p.add_argument("--plot", default="docs/scaling.png", help="PNG plot (default docs/scaling.png)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one mpiexec job may take")
    args = p.parse_args(argv)

    from mpiswarm.launch import mpiswarm_command
    from mpiswarm.sim import start_process

    os.makedirs(args.out_dir, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (ROOT, env.get("PYTHONPATH")) if x)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    ranks = sorted(set(args.ranks))
    outputs = []
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M")
    sim_args = ["--count", max(ranks), "--model", MODEL, "--time-scale", args.time_scale]
    print(f"scaling study: simulator {' '.join(map(str, sim_args))}", flush=True)
    with start_process([str(a) for a in sim_args]) as sim:
        for r in ranks:
            n = r * args.prompts_per_rank
            inp = os.path.join(args.out_dir, f"in_{r}.jsonl")
            out = os.path.join(args.out_dir, f"out_{r}.h5")
            write_prompts(inp, n)
            cmd = mpiswarm_command(r, [
                "run", inp, "-o", out, "--model", MODEL, "--endpoint", "http://127.0.0.1:{port}/v1",
                "--base-port", str(sim.ports[0]), "--max-tokens", str(args.max_tokens),
                "--batch-size", str(args.batch_size), "--restart", "-q"])
            print("$ " + shlex.join(cmd), flush=True)
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                print(f"scaling study: {r} ranks did not finish in {args.timeout} s", file=sys.stderr)
                return 1
            if code != 0:
                print(f"scaling study: {r} ranks exited {code}", file=sys.stderr)
                return 1
            print(f"  {r} ranks, {n} prompts: {time.monotonic() - t0:.1f} s including start-up", flush=True)
            outputs.append(out)
    for path in (args.report, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cmd = [sys.executable, "-m", "mpiswarm", "scaling", *outputs, "-o", args.report, "--plot", args.plot,
           "--title", "mpiswarm weak scaling on simulated endpoints"]
    print("$ " + shlex.join(cmd), flush=True)
    code = subprocess.call(cmd, env=env)
    if code != 0:
        return code
    if args.report != "-":
        with open(args.report, "a", encoding="utf-8") as fh:
            fh.write(
                "\n## How it was measured\n\n"
                f"`{shlex.join(['python', 'tools/scaling_study.py', *(argv if argv is not None else sys.argv[1:])])}`"
                f" on {started}: one simulator process serving {max(ranks)} endpoints "
                f"(`python -m mpiswarm.sim {' '.join(map(str, sim_args))}`), then `mpiexec -n R` for each R, "
                f"{args.prompts_per_rank} prompts per rank, `--max-tokens {args.max_tokens} --batch-size "
                f"{args.batch_size}`. Machine: {os.cpu_count()} cores; load average "
                f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (every rank, the simulator and "
                "mpiexec share these cores).\n")
    print(f"scaling study: report {args.report}, plot {args.plot}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
