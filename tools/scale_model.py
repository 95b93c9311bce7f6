#!/usr/bin/env python3
"""Rank 0's share of a job, measured and projected to thousands of ranks (``mpiswarm.bench.scale_model``; ``--help`` for its options)."""
import sys

from mpiswarm.bench.scale_model import main

if __name__ == "__main__":
    sys.exit(main())
