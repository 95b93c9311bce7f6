#!/usr/bin/env python3
"""Command line of ``mpiswarm.engines.tiny_gguf`` (``--help`` for its options)."""
import sys

from mpiswarm.engines.tiny_gguf import main

if __name__ == "__main__":
    sys.exit(main())
