"""``mpiswarm demo``: simulated endpoints on loopback, one per rank, and a real mpiexec job.

The demo runs exactly what a user runs on Aurora, with ``python -m mpiswarm.sim`` in place
of vLLM: ``mpiexec -n N mpiswarm run PROMPTS -o OUT --model sim-model --endpoint
'http://127.0.0.1:{port}/v1' --base-port P``.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from importlib import resources

from .launch import mpiswarm_command

MODEL = "sim-model"


def example_prompts() -> str:
    """Path of the shipped example prompt set (1,200 JSONL rows with gene/organism fields)."""
    return str(resources.files("mpiswarm") / "data" / "example_prompts.jsonl")


def run_demo(args) -> int:
    from .sim import start_process

    prompts = args.prompts or example_prompts()
    sim_args = ["--count", str(args.ranks), "--model", MODEL, "--time-scale", str(args.time_scale)]
    print(f"mpiswarm demo: starting {args.ranks} simulated vLLM endpoints on 127.0.0.1", flush=True)
    with start_process(sim_args) as sim:
        run_args = [
            "run", prompts, "-o", args.output, "--model", MODEL,
            "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", str(sim.ports[0]),
        ]
        command = mpiswarm_command(args.ranks, run_args)
        print("$ " + shlex.join(command), flush=True)
        code = subprocess.call(command)
    if code in (0, 3):
        print(f"mpiswarm demo: results in {os.path.abspath(args.output)} "
              "(read them with h5py or mpiswarm.store.read_results)", flush=True)
    return code
