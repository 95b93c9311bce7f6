"""mpiswarm: prompts to many vLLM endpoints with MPI, answers into one ordered HDF5 file."""
__version__ = "0.1.0"


def read_results(path, as_frame=None):
    """Read a result file: a pandas DataFrame (one row per prompt, one column per row dataset,
    lists in ``completion``/``finish_reason`` when n > 1; attributes and the per-rank table in
    ``df.attrs``) when pandas is installed, else the dict of :func:`mpiswarm.store.read_results`.
    ``as_frame=True``/``False`` forces one or the other; see :mod:`mpiswarm.frame`."""
    from .frame import read_frame as _read

    return _read(path, as_frame)


def scatter_gather(prompts, **kwargs):
    """See :func:`mpiswarm.api.scatter_gather` (imported lazily: MPI starts on first use)."""
    from .api import scatter_gather as _impl

    return _impl(prompts, **kwargs)


def broadcast(prompts, **kwargs):
    """See :func:`mpiswarm.api.broadcast`."""
    from .api import broadcast as _impl

    return _impl(prompts, **kwargs)


def tree_reduce(prompts, reduce_prompt, **kwargs):
    """See :func:`mpiswarm.api.tree_reduce`."""
    from .api import tree_reduce as _impl

    return _impl(prompts, reduce_prompt, **kwargs)


__all__ = ["__version__", "broadcast", "read_results", "scatter_gather", "tree_reduce"]
