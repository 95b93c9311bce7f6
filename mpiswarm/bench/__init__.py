"""mpiswarm's benchmarks, each next to a reference measured in the same run (``tools/`` runs them):

* :mod:`.suite` — the six figures of ``docs/bench.md`` (``python tools/bench.py``);
* :mod:`.cpu` — CPU per prompt against a bare pipeline (``tools/bench_cpu.py``);
* :mod:`.scale_model` — rank 0's share of a job, projected to thousands of ranks (``tools/scale_model.py``);
* :mod:`.scaling_study` — a weak-scaling study on one machine (``tools/scaling_study.py``).

They measure the package's internals, so they live in it; nothing here is imported by a run.
"""
