#!/usr/bin/env python3
"""Command line of ``mpiswarm/engines/tiny_hf.py``, run by the vLLM environment's Python (which
does not have mpiswarm installed): the module is run as the file it is."""
import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "mpiswarm" / "engines" / "tiny_hf.py"), run_name="__main__")
