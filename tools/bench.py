#!/usr/bin/env python3
"""mpiswarm's benchmark: seven sections, each figure next to a reference measured in the same run (``mpiswarm.bench.suite``; ``--help`` for its options)."""
import sys

from mpiswarm.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
