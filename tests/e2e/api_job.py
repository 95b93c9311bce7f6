"""Run under mpiexec by test_ensemble_api.py: the Python API's three collectives, results
dumped as JSON by rank 0.  ``python api_job.py OUT.json BASE_PORT``"""
import json
import sys

from mpi4py import MPI

import mpiswarm
from mpiswarm.aggregate import majority_vote

out, port = sys.argv[1], int(sys.argv[2])
comm = MPI.COMM_WORLD
common = {"model": "sim-model", "endpoint": "http://127.0.0.1:{port}/v1", "base_port": port, "comm": comm}
prompts = [f"Q{i}: gene {i}" for i in range(20)] if comm.Get_rank() == 0 else None
records = mpiswarm.scatter_gather(prompts, max_tokens=6, seed=2, **common)
ensemble = mpiswarm.broadcast(["Yes or no?"], repeat=3, max_tokens=1, **common)
tree = mpiswarm.tree_reduce(prompts, "Combine {level}/{group}: {responses}", fanin=4, max_tokens=6, **common)
try:
    mpiswarm.scatter_gather(prompts, no_such_option=1, **common)
    bad = "accepted"
except TypeError as exc:
    bad = str(exc)
if comm.Get_rank() == 0:
    vote = majority_vote(ensemble)
    with open(out, "w") as fh:
        json.dump({"records": records, "ensemble": ensemble, "vote": [vote.answer, vote.share, vote.n_valid],
                   "tree": tree, "bad": bad}, fh)
