"""``python -m mpiswarm`` is the ``mpiswarm`` command."""
import sys

from .cli import main

sys.exit(main())
