#!/usr/bin/env python3
"""CPU cost per prompt of one mpiswarm rank against an instant endpoint, next to a bare
pipeline measured in the same run.

Both sides run as subprocesses against the same simulated endpoint (``--time-scale 0``,
in its own process, so its CPU is not counted) and are measured by the CPU time
(user + system) of the child process. Each runs at two sizes; the cost per prompt is the
slope between them, so interpreter start-up and imports cancel out.

* **bare**: read the JSONL with ``json.loads``, raw ``httpx`` POSTs of JSON lists,
  ``json.loads`` of the answers, an ``h5py`` write of prompt/completion/custom_id.
* **mpiswarm**: ``python -m mpiswarm run`` as one MPI rank (singleton, no mpiexec).

Usage: ``python tools/bench_cpu.py [--sizes 20000 100000] [--batch-size 1024] [--repeat 3]``
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

BARE = r"""
import json, sys
import h5py, numpy as np
try:
    import httpx2 as httpx
except ImportError:
    import httpx
path, url, out, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
prompts, ids = [], []
with open(path, "rb") as fh:
    for line in fh:
        row = json.loads(line)
        prompts.append(row["prompt"]); ids.append(row["custom_id"])
answers = [""] * len(prompts)
with httpx.Client(timeout=600) as client:
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        resp = client.post(url + "/completions", json={"model": "sim-model", "prompt": chunk, "max_tokens": 16})
        for choice in json.loads(resp.content)["choices"]:
            answers[start + choice["index"]] = choice["text"]
dt = h5py.string_dtype("utf-8")
with h5py.File(out, "w") as f:
    for name, values in (("prompt", prompts), ("completion", answers), ("custom_id", ids)):
        arr = np.empty(len(values), dtype=object); arr[:] = values
        f.create_dataset(name, data=arr, dtype=dt)
"""


def child_cpu(cmd: list[str], env: dict) -> float:
    """CPU seconds (user + system) used by ``cmd`` and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def write_prompts(path: str, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"custom_id": f"r{i}", "prompt": f"Question {i}: what does gene G{i % 977} do?"}) + "\n")


def measure(sizes, batch_size, repeat, workdir, url, env) -> dict:
    commands = {
        "bare": lambda inp, out: [sys.executable, "-c", BARE, inp, url, out, str(batch_size)],
        "mpiswarm": lambda inp, out: [
            sys.executable, "-m", "mpiswarm", "run", inp, "-o", out, "--model", "sim-model", "--endpoint", url,
            "--max-tokens", "16", "--batch-size", str(batch_size), "--quiet"],
    }
    cpu = {name: {} for name in commands}
    for n in sizes:
        inp = os.path.join(workdir, f"in{n}.jsonl")
        write_prompts(inp, n)
        for _ in range(repeat):  # interleaved, best of `repeat`: noise only ever adds CPU
            for name, make in commands.items():
                seconds = child_cpu(make(inp, os.path.join(workdir, f"{name}{n}.h5")), env)
                cpu[name][n] = min(cpu[name].get(n, float("inf")), seconds)
    small, large = sizes
    per_prompt = {name: (c[large] - c[small]) / (large - small) * 1e6 for name, c in cpu.items()}
    return {"sizes": sizes, "batch_size": batch_size, "cpu_s": cpu, "us_per_prompt": per_prompt,
            "ratio": per_prompt["mpiswarm"] / per_prompt["bare"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[20000, 100000])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    from mpiswarm.sim import start_process

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # children import this package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in (root, os.environ.get("PYTHONPATH")) if x))
    with tempfile.TemporaryDirectory() as workdir, start_process(["--time-scale", "0"]) as sim:
        result = measure(args.sizes, args.batch_size, args.repeat, workdir, sim.urls[0], env)
    us = result["us_per_prompt"]
    print(f"CPU per prompt, one rank, instant endpoint, {args.batch_size} prompts a call "
          f"(slope {args.sizes[0]:,} -> {args.sizes[1]:,} prompts, best of {args.repeat}):")
    print("| pipeline | CPU µs/prompt | ratio |\n|---|---|---|")
    print(f"| bare (json + httpx + h5py) | {us['bare']:.2f} | 1.00 |")
    print(f"| mpiswarm run (1 rank) | {us['mpiswarm']:.2f} | {result['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
