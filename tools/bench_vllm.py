#!/usr/bin/env python3
"""Throughput on vLLM's own server against vLLM's run-batch (``mpiswarm.bench.vllm``; ``--help``)."""
import sys

from mpiswarm.bench.vllm import main

if __name__ == "__main__":
    sys.exit(main())
