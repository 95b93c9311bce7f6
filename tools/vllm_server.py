#!/usr/bin/env python3
"""Command line of ``mpiswarm.engines.vllm_server`` (``--help`` for its options)."""
import sys

from mpiswarm.engines.vllm_server import main

if __name__ == "__main__":
    sys.exit(main())
