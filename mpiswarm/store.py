"""All HDF5 access: the result file's schema, written atomically, and read back.

Schema (row *i* = input prompt *i*): datasets ``prompt``, ``completion`` ((N,) or (N, n)),
``custom_id``, ``finish_reason`` (shaped like ``completion``), ``ok``, ``error``, ``rank``,
``prompt_tokens``, ``completion_tokens``, ``latency_s``; group ``ranks`` with one dataset
per :class:`~mpiswarm.records.RankStats` field (row r = rank r); root attributes ``model``,
``n_ranks``, ``n_prompts``, ``n_ok``, ``complete``, ``mpiswarm_version``, ``params`` (JSON)
and the wall-clock phase times ``time_<phase>_s``.

The file is written under a temporary name in the output's directory, then renamed: the
output path holds either a whole file or nothing new.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import fields

import h5py
import numpy as np

from . import __version__
from .records import RankStats, ResultColumns

STR = h5py.string_dtype("utf-8")


def _strings(values: list[str], shape=None) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr if shape is None else arr.reshape(shape)


@contextmanager
def atomic_h5(path: str | os.PathLike):
    """Open a new HDF5 file at a temporary name beside ``path``; rename it into place on
    success, remove it on failure."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResultWriter:
    """Writes one result file's rows (in blocks, any order) and its metadata."""

    def __init__(self, f: h5py.File, n_rows: int, n: int):
        self.file = f
        self.n_rows = n_rows
        self.n = n
        self.n_ok = 0
        shape = (n_rows,) if n == 1 else (n_rows, n)
        for name in ("prompt", "custom_id", "error"):
            f.create_dataset(name, shape=(n_rows,), dtype=STR)
        for name in ("completion", "finish_reason"):
            f.create_dataset(name, shape=shape, dtype=STR)
        f.create_dataset("ok", shape=(n_rows,), dtype=bool)
        f.create_dataset("rank", shape=(n_rows,), dtype=np.int32, fillvalue=-1)
        for name in ("prompt_tokens", "completion_tokens"):
            f.create_dataset(name, shape=(n_rows,), dtype=np.int64, fillvalue=-1)
        f.create_dataset("latency_s", shape=(n_rows,), dtype=np.float64, fillvalue=np.nan)

    def write_rows(self, prompts: list[str], custom_ids: list[str], results: ResultColumns) -> None:
        """Write ``results`` (consecutive rows, in index order) with their prompts and ids."""
        k = len(results)
        if k == 0:
            return
        start = int(results.index[0])
        if len(prompts) != k or len(custom_ids) != k or int(results.index[-1]) != start + k - 1:
            raise ValueError("write_rows takes consecutive rows with one prompt and custom_id each")
        rows = slice(start, start + k)
        shape = (k,) if self.n == 1 else (k, self.n)
        f = self.file
        f["prompt"][rows] = _strings(prompts)
        f["custom_id"][rows] = _strings(custom_ids)
        f["completion"][rows] = _strings(results.completion, shape)
        f["finish_reason"][rows] = _strings(results.finish_reason, shape)
        f["error"][rows] = _strings(results.error)
        for name in ("ok", "rank", "prompt_tokens", "completion_tokens", "latency_s"):
            f[name][rows] = getattr(results, name)
        self.n_ok += int(results.ok.sum())

    def write_ranks(self, stats: list[RankStats]) -> None:
        """The per-rank statistics table, group ``ranks`` (row r = rank r)."""
        group = self.file.create_group("ranks")
        for f in fields(RankStats):
            values = [getattr(s, f.name) for s in stats]
            if f.name == "extra":
                values = [json.dumps(v, sort_keys=True) for v in values]
            if f.name == "extra" or f.type in ("str", str):
                group.create_dataset(f.name, data=_strings(values), dtype=STR)
            else:
                group.create_dataset(f.name, data=np.asarray(values))

    def set_attrs(self, attrs: dict) -> None:
        """Root attributes; dicts and lists are stored as JSON."""
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


@contextmanager
def create_result_file(path: str | os.PathLike, n_rows: int, n: int = 1):
    """A :class:`ResultWriter` for a new file at ``path`` (written atomically)."""
    with atomic_h5(path) as f:
        writer = ResultWriter(f, n_rows, n)
        yield writer
        writer.set_attrs({"mpiswarm_version": __version__, "n_prompts": n_rows, "n_ok": writer.n_ok})


def write_results(path, *, prompts, custom_ids, results: ResultColumns, rank_stats, attrs) -> None:
    """Write a whole result file in one go (rows in index order, covering the input)."""
    if len(results) != len(prompts) or (len(prompts) and not np.array_equal(results.index, np.arange(len(prompts)))):
        raise ValueError(f"results cover {len(results)} rows, not the {len(prompts)} rows of the input in order")
    with create_result_file(path, len(prompts), results.n) as out:
        out.write_rows(prompts, custom_ids, results)
        out.write_ranks(rank_stats)
        out.set_attrs(attrs)


def read_results(path: str | os.PathLike) -> dict:
    """Read a result file: ``{"attrs": {...}, "ranks": {...}, <dataset>: array, ...}``.

    String datasets come back as arrays of ``str``; ``params`` is decoded from JSON.
    """
    out: dict = {}
    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        if "params" in attrs:
            attrs["params"] = json.loads(attrs["params"])
        out["attrs"] = attrs
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset):
                out[name] = ds.asstr()[()] if ds.dtype == object else ds[()]
        if "ranks" in f:
            out["ranks"] = {
                name: (ds.asstr()[()] if ds.dtype == object else ds[()]) for name, ds in f["ranks"].items()
            }
    return out
