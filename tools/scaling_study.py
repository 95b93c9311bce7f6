#!/usr/bin/env python3
"""A weak-scaling study on one machine: simulators, mpiexec at each rank count, report and plot (``mpiswarm.bench.scaling_study``; ``--help`` for its options)."""
import sys

from mpiswarm.bench.scaling_study import main

if __name__ == "__main__":
    sys.exit(main())
