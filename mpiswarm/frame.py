"""A result file as a pandas DataFrame (``mpiswarm.read_results(path)``).

One row per prompt, in input order (the index is the row number); one column per row
dataset (:data:`mpiswarm.schema.FILE_COLUMNS`: ``custom_id``, ``prompt``, ``completion``,
``finish_reason``, ``ok``, ``error``, ``error_kind``, ``http_status``, ``rank``,
``prompt_tokens``, ``completion_tokens``, ``latency_s``, and ``reasoning`` when the file has it). When the file holds
several completions a prompt (``--n`` > 1), ``completion`` and ``finish_reason`` hold one
list a row. The file's root attributes (``params`` decoded) are in ``df.attrs["mpiswarm"]``
and the per-rank table in ``df.attrs["ranks"]`` (column -> list), plain Python values only.
"""
from __future__ import annotations

import os

from .store import OPTIONAL_ROW_DATASETS, ROW_DATASETS, read_results as read_dict


def pandas_available() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def to_frame(data: dict):
    """The DataFrame for the dict :func:`mpiswarm.store.read_results` returns."""
    import pandas as pd

    columns = {}
    for name in ROW_DATASETS + OPTIONAL_ROW_DATASETS:
        if name in data:
            values = data[name]
            columns[name] = values.tolist() if values.ndim == 2 else values
    df = pd.DataFrame(columns)
    df.attrs["mpiswarm"] = dict(data.get("attrs", {}))
    df.attrs["ranks"] = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in data.get("ranks", {}).items()}
    return df


def read_frame(path: str | os.PathLike, as_frame: bool | None = None):
    """Read the result file at ``path``.

    ``as_frame=None`` (default): a pandas DataFrame when pandas is installed, else the dict of
    :func:`mpiswarm.store.read_results`; ``True``: a DataFrame (ImportError without pandas);
    ``False``: the dict. Raises :class:`mpiswarm.store.ResultFileError` (a ``ValueError``) if
    ``path`` is missing or not a result file.
    """
    from .store import open_result_file

    with open_result_file(path):
        pass
    if as_frame is None:
        as_frame = pandas_available()
    if as_frame:
        import pandas  # noqa: F401  (ImportError here, before the file is read)
    data = read_dict(path)
    return to_frame(data) if as_frame else data
