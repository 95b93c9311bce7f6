#!/usr/bin/env python3
"""CPU per prompt of one rank against a bare pipeline (``mpiswarm.bench.cpu``; ``--help`` for its options)."""
import sys

from mpiswarm.bench.cpu import main

if __name__ == "__main__":
    sys.exit(main())
