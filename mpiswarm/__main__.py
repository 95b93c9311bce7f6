"""``python -m mpiswarm`` is the ``mpiswarm`` command."""
from .cli import entry

entry()
