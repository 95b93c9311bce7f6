"""mpiswarm's Python API inside your own mpi4py program.

    mpiexec -n 4 python tools/api_example.py --endpoint 'http://127.0.0.1:{port}/v1' --base-port 8000

Every rank calls each function (they are collective); rank 0 gets the results. Start
simulated endpoints first to try it without GPUs: ``python -m mpiswarm.sim --count 4``.
"""
import argparse

from mpi4py import MPI

import mpiswarm
from mpiswarm.aggregate import majority_vote

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--endpoint", default="http://127.0.0.1:{port}/v1")
parser.add_argument("--base-port", type=int, default=8000)
parser.add_argument("--model", default="sim-model")
args = parser.parse_args()
comm = MPI.COMM_WORLD
common = {"model": args.model, "endpoint": args.endpoint, "base_port": args.base_port, "comm": comm,
          "max_tokens": 16}

# 1. scatter-gather: one answer per prompt, in input order, on rank 0
genes = [{"gene": g, "organism": "E. coli"} for g in ("lacZ", "recA", "gyrB", "ftsZ", "dnaK", "rpoB")]
prompts = [f"Analyze gene {g['gene']} in {g['organism']}" for g in genes]
records = mpiswarm.scatter_gather(prompts, **common)

# 2. a broadcast ensemble: the question to every endpoint 5 times, then a majority vote
votes = mpiswarm.broadcast(["Is the sky blue? Answer yes or no."], repeat=5, **{**common, "max_tokens": 1})

# 3. a tree reduction: the answers combined 3 at a time until one remains
tree = mpiswarm.tree_reduce(prompts, "Combine these analyses into one:\n{responses}\nCombined:", fanin=3, **common)

if comm.Get_rank() == 0:
    for r in records:
        print(f"{r['custom_id']:>3} ok={r['ok']} rank={r['rank']}: {r['completion'][:60]!r}")
    vote = majority_vote(votes)
    print(f"ensemble: {vote.answer!r} with {vote.share:.0%} of {vote.n_valid} answers")
    print(f"tree levels {[len(level['text']) for level in tree['levels']]}; final: {tree['final']!r}")
