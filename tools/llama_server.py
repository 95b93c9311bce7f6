#!/usr/bin/env python3
"""Command line of ``mpiswarm.engines.llama_server`` (``--help`` for its options)."""
import sys

from mpiswarm.engines.llama_server import main

if __name__ == "__main__":
    sys.exit(main())
