"""All HDF5 access: the result file's schema, written atomically, and read back.

Schema (row *i* = input prompt *i*): one dataset a column of :data:`mpiswarm.schema.FILE_COLUMNS`
(``custom_id``, ``prompt``, ``completion`` ((N,) or (N, n)), ``finish_reason`` (shaped like
``completion``), ``ok``, ``error``, ``error_kind`` (an HDF5 enum), ``http_status``, ``rank``,
``prompt_tokens``, ``completion_tokens``, ``latency_s``; ``reasoning`` (shaped like
``completion``, '' where none) only when some answer carried a reasoning model's reasoning); group ``ranks`` with one dataset
per :class:`~mpiswarm.records.RankStats` field (row r = rank r); root attributes ``model``,
``n_ranks``, ``n_prompts``, ``n_ok``, ``complete``, ``mpiswarm_version``, ``params`` (JSON)
and the wall-clock phase times ``time_<phase>_s``.

The file is written under a temporary name in the output's directory, then renamed: the
output path holds either a whole file or nothing new.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_path
from .inputs import InputError
from .codec import storable
from .packed import PackedColumns, PackedStrings
from .records import RankStats, ResultColumns
from .errors import KIND_BY_LABEL, ErrorKind
from .schema import (CHOICE, COLUMNS, FILE_COLUMNS, OPTIONAL_ROW_DATASETS, REDUCE_COLUMNS, ROW_DATASETS,  # noqa: F401
                     file_dtype, labels)

STR = h5py.string_dtype("utf-8")


def _strings(values: list[str], shape=None) -> np.ndarray:
    """``values`` as an object array for h5py, each string as HDF5 may store it (:func:`storable`)."""
    arr = np.empty(len(values), dtype=object)
    arr[:] = [storable(v) for v in values]
    return arr if shape is None else arr.reshape(shape)


def _attr(value):
    """An attribute's value as stored: strings through :func:`storable`, dicts and lists as JSON."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, sort_keys=True)
    return storable(value) if isinstance(value, str) else value


def _vlen_utf8() -> h5py.h5t.TypeID:
    """The memory type of an array of ``char *``: variable-length, NUL-terminated UTF-8."""
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(h5py.h5t.VARIABLE)
    tid.set_cset(h5py.h5t.CSET_UTF8)
    return tid


def _write_strings(ds: h5py.Dataset, start: int, strings: PackedStrings) -> None:
    """Write ``strings`` to rows ``start:`` of the string dataset ``ds`` ((N,) or (N, n):
    n strings a row), handing HDF5 pointers into the packed buffer. HDF5's C strings end at
    a NUL, so a column holding one is written through h5py (:func:`_strings`: the NUL rule)."""
    count = len(strings)
    shape = (count,) if ds.ndim == 1 else (count // ds.shape[1], ds.shape[1])
    if count == 0:
        return
    if strings.has_nul:
        ds[start:start + shape[0]] = _strings(strings.decode(), shape)
        return
    pointers = strings.pointers().reshape(shape)
    fspace = ds.id.get_space()
    fspace.select_hyperslab((start,) + (0,) * (ds.ndim - 1), shape)
    ds.id.write(h5py.h5s.create_simple(shape), fspace, pointers, mtype=_vlen_utf8())
    del pointers  # the buffer they point into (strings.data) is alive until here


def row_datasets(n_rows: int, n: int, optional: tuple[str, ...] = ()) -> list[tuple]:
    """``(name, shape, dtype, fill value)`` of every row dataset of a file of ``n_rows`` rows
    and ``n`` completions a row (:data:`mpiswarm.schema.FILE_COLUMNS`; the optional columns
    only those in ``optional``)."""
    out = []
    for c in FILE_COLUMNS:
        if c.optional and c.name not in optional:
            continue
        shape = (n_rows, n) if c.per == CHOICE and n > 1 else (n_rows,)
        out.append((c.name, shape, file_dtype(c), None if c.is_string or c.dtype == "bool" else c.fill))
    return out


@contextmanager
def atomic_h5(path: str | os.PathLike):
    """Open a new HDF5 file at a temporary name beside ``path``; rename it into place on
    success, remove it on failure."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


class ResultWriter:
    """Writes one result file's rows (in blocks, any order) and its metadata. A part file of a
    virtual layout holds rows ``first_row:first_row + n_rows`` of the input (``optional``: the
    optional columns to create now, so that every part has them)."""

    def __init__(self, f: h5py.File, n_rows: int, n: int, first_row: int = 0, optional: tuple[str, ...] = (),
                 parts: list[tuple[str, int, int]] | None = None):
        self.file = f
        self.n_rows = n_rows
        self.n = n
        self.first_row = first_row
        self.n_ok = 0
        for name, shape, dtype, fill in row_datasets(n_rows, n, optional):
            if parts is None:
                f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill)
            else:  # rows of part files (path relative to this file's directory, first row, rows)
                layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
                for path, first, count in parts:
                    if count:
                        layout[first:first + count] = h5py.VirtualSource(path, name, shape=(count,) + shape[1:])
                f.create_virtual_dataset(name, layout, fillvalue=fill)

    def write_rows(self, prompts, custom_ids, results: ResultColumns | PackedColumns, base: int = 0) -> None:
        """Write ``results`` (rows sorted by index, any subset) with their prompts and ids;
        ``prompts`` and ``custom_ids`` hold rows ``base:`` of the input (lists of ``str`` or
        :class:`~mpiswarm.packed.PackedStrings`). Each run of consecutive rows is one slice
        write per dataset; strings go to HDF5 from packed UTF-8, never as Python objects."""
        if isinstance(results, ResultColumns):
            results = PackedColumns.from_results(results)
        index = results.index
        if len(index) == 0:
            return
        cuts = np.flatnonzero(np.diff(index) != 1) + 1
        inputs = {"prompt": prompts, "custom_id": custom_ids}
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(index)]):
            self._write_run(inputs, base, results, a, b)
        self.n_ok += int(results.ok.sum())

    def _write_run(self, inputs: dict, base: int, results: PackedColumns, a: int, b: int) -> None:
        k, n = b - a, self.n
        row = int(results.index[a])
        start = row - self.first_row  # in this file
        texts = slice(row - base, row - base + k)
        f = self.file
        for c in FILE_COLUMNS:
            name = c.name
            if name in inputs:
                column = inputs[name]
                strings = column.take(texts) if isinstance(column, PackedStrings) else PackedStrings.pack(column[texts])
                _write_strings(f[name], start, strings)
            elif c.is_string:
                if c.optional and name not in results.carried:
                    continue
                if name not in f:  # an optional column some row has: created on first use
                    f.create_dataset(name, shape=f["completion"].shape, dtype=STR)
                _write_strings(f[name], start, results.strings[name].take(slice(c.entries(a, n), c.entries(b, n))))
            else:
                f[name][start:start + k] = results.numeric[name][a:b]

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

    def write_ensemble(self, plan, votes) -> None:
        """Group ``ensemble``: per row ``source_row`` (the input prompt), ``repeat`` and
        ``seed`` (the row's ``rank`` is in the main table); per input prompt the majority
        ``vote``, its ``vote_share`` of the valid answers, ``n_votes``, ``n_valid`` and
        ``n_failed`` (an :class:`~mpiswarm.ensemble.EnsemblePlan` and its votes)."""
        group = self.file.create_group("ensemble")
        group.create_dataset("source_row", data=plan.source_row())
        group.create_dataset("repeat", data=plan.repetition())
        group.create_dataset("seed", data=plan.seed())
        group.create_dataset("vote", data=_strings([v.answer for v in votes]), dtype=STR)
        for dataset, attr in (("vote_share", "share"), ("n_votes", "votes"), ("n_valid", "n_valid"),
                              ("n_failed", "n_failed")):
            group.create_dataset(dataset, data=np.asarray([getattr(v, attr) for v in votes]))
        group.attrs["repeat"] = plan.repeat
        group.attrs["n_endpoints"] = plan.n_ranks
        group.attrs["base_seed"] = plan.base_seed

    def write_reduce(self, reduction) -> None:
        """Group ``reduce``: one group ``level_L`` per level (row g = group g: the result columns
        of :data:`~mpiswarm.schema.REDUCE_COLUMNS` — ``text``, ``ok``, ``error``, ``error_kind``,
        ``http_status``, ``finish_reason``, ``rank`` that combined it, ``latency_s`` —, the
        supervisor ``prompt`` as sent, ``first_input`` and ``n_inputs`` in the level below,
        ``n_left_out`` failed inputs, ``shortened``) and the scalar string ``final``; the options
        and shape as attributes."""
        group = self.file.create_group("reduce")
        for level in reduction.levels:
            res = level.results
            g = group.create_group(f"level_{level.level}")
            for column, name in REDUCE_COLUMNS:
                values = getattr(res, column.name)
                g.create_dataset(name, data=_strings(values) if column.is_string else values, dtype=file_dtype(column))
            g.create_dataset("prompt", data=_strings(level.prompt), dtype=STR)
            g.create_dataset("first_input", data=level.first_input)
            g.create_dataset("n_inputs", data=level.n_inputs)
            g.create_dataset("n_left_out", data=level.n_left_out)
            g.create_dataset("shortened", data=level.shortened)
        final = group.create_dataset("final", data=storable(reduction.final), dtype=STR)
        final.attrs["ok"] = reduction.final_ok
        final.attrs["error"] = _attr(reduction.final_error)
        options = reduction.options.as_dict()
        options["max_tokens"] = options["max_tokens"] or -1  # -1: the map phase's --max-tokens
        for key, value in {**options, "n_answers": reduction.n_answers, "complete": reduction.complete,
                           "level_sizes": json.dumps(reduction.sizes())}.items():
            group.attrs[key] = _attr(value)

    def set_attrs(self, attrs: dict) -> None:
        """Root attributes; dicts and lists are stored as JSON, strings by the NUL rule."""
        for key, value in attrs.items():
            self.file.attrs[key] = _attr(value)


@contextmanager
def create_result_file(path: str | os.PathLike, n_rows: int, n: int = 1):
    """A :class:`ResultWriter` for a new file at ``path`` (written atomically)."""
    with atomic_h5(path) as f:
        writer = ResultWriter(f, n_rows, n)
        yield writer
        writer.set_attrs({"mpiswarm_version": __version__, "n_prompts": n_rows, "n_ok": writer.n_ok})


class WriteGuard:
    """The writes of one output file inside collectives: one that fails (disk full, quota, a
    file size limit) must not take its rank out of the rounds the others are in. The first
    ``OSError`` is kept and later writes are skipped; :meth:`check` raises it inside the
    file's context, so its temporary file is removed and nothing half-written is renamed into
    place; :attr:`message` says what failed in one line."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.error: OSError | None = None
        self.needed = 0  # bytes reserve() could not get

    def reserve(self, nbytes: int) -> None:
        """Check that ``nbytes`` can be written beside the file before writing it: allocate them
        in a probe file (``posix_fallocate``: refused past a full disk, a quota or a file size
        limit, as the writes would be) and free them again. HDF5 (2.0.0 with h5py 3.16, measured
        here) crashes the process when a variable-length string write fails, so a file that
        cannot fit must be refused before it is begun. A file system that cannot allocate ahead
        is left to the writes."""
        if self.error is not None or nbytes <= 0:
            return
        probe = f"{self.path}.space-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, nbytes)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # cannot tell ahead: the writes will
                return
            self.error, self.needed = exc, nbytes

    def enter(self, stack, context):
        """``stack.enter_context(context)``, or None if opening the file failed (or an earlier
        step did)."""
        if self.error is not None:
            return None
        try:
            return stack.enter_context(context)
        except OSError as exc:
            self.error = exc
            return None

    def run(self, write, *args, **kwargs) -> None:
        """``write(*args, **kwargs)`` unless an earlier step failed; keeps its ``OSError``."""
        if self.error is None and write is not None:
            try:
                write(*args, **kwargs)
            except OSError as exc:
                self.error = exc

    def check(self) -> None:
        """Raise the kept error, if any."""
        if self.error is not None:
            raise self.error

    @property
    def message(self) -> str | None:
        """``cannot write PATH: REASON`` (the system's reason, else HDF5's first line), or None."""
        exc = self.error
        if exc is None:
            return None
        told = re.search(r"error message = '([^']*)'", str(exc))  # HDF5's write failure names the system's
        if exc.errno:
            reason = os.strerror(exc.errno)
        elif told:
            reason = told.group(1)
        else:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        needs = f" (it needs about {self.needed / 1e6:,.0f} MB)" if self.needed else ""
        return f"cannot write {self.path}: {reason}{needs}"


#: what HDF5 adds to a variable-length string (the heap object's header and the dataset's
#: reference to it), and to a file, beyond the bytes of its rows: for estimates only
_VLEN_OVERHEAD = 48
_FILE_OVERHEAD = 1 << 20


def estimate_file_bytes(row_bytes: int, n_strings: int) -> int:
    """About how large a result file holding ``row_bytes`` bytes of row data (strings' UTF-8
    and numeric columns) in ``n_strings`` strings is, a little more rather than less."""
    return int(row_bytes * 1.05) + _VLEN_OVERHEAD * n_strings + _FILE_OVERHEAD


#: A virtual layout's part files live in the directory ``OUTPUT + PARTS_SUFFIX`` beside the output.
PARTS_SUFFIX = ".parts"


def parts_dir(output: str | os.PathLike) -> str:
    """Where the part files of a virtual layout of ``output`` live."""
    return os.path.abspath(os.fspath(output)) + PARTS_SUFFIX


def part_name(token: str, rank: int) -> str:
    """Rank ``rank``'s part file in the parts directory; ``token`` names one run, so a run never
    overwrites the parts an earlier output file still points to."""
    return f"{token}-r{rank:06d}.h5"


@contextmanager
def create_part_file(path: str | os.PathLike, first_row: int, n_rows: int, n: int = 1,
                     optional: tuple[str, ...] = ()):
    """A :class:`ResultWriter` for the part file at ``path`` holding input rows
    ``first_row:first_row + n_rows`` (written atomically; rows only, no metadata)."""
    with atomic_h5(path) as f:
        writer = ResultWriter(f, n_rows, n, first_row=first_row, optional=optional)
        yield writer
        f.attrs["first_row"] = first_row


@contextmanager
def create_virtual_file(path: str | os.PathLike, n_rows: int, n: int, parts: list[tuple[str, int, int]],
                        optional: tuple[str, ...] = ()):
    """A :class:`ResultWriter` for a new result file at ``path`` whose row datasets are HDF5
    virtual datasets over the part files ``parts`` (``(path relative to the output's
    directory, first row, rows)``); the caller sets ``n_ok``. Written atomically."""
    with atomic_h5(path) as f:
        writer = ResultWriter(f, n_rows, n, optional=optional, parts=parts)
        yield writer
        writer.set_attrs({"mpiswarm_version": __version__, "n_prompts": n_rows, "n_ok": writer.n_ok,
                          "layout": "virtual", "parts": [p for p, _, k in parts if k]})


def remove_parts(output: str | os.PathLike, parts: list[tuple[str, int, int]]) -> None:
    """Remove the part files ``parts`` (as :func:`create_virtual_file` takes them) of one run
    of ``output``, those that exist (a run whose output could not be written)."""
    directory = os.path.dirname(os.path.abspath(os.fspath(output)))
    for relative, _, _ in parts:
        try:
            os.unlink(os.path.join(directory, relative))
        except FileNotFoundError:
            pass


def remove_stale_parts(output: str | os.PathLike, keep: list[str]) -> None:
    """Remove the part files beside ``output`` that its file no longer points to (earlier runs'),
    and the parts directory when nothing is left in it."""
    directory = parts_dir(output)
    if not os.path.isdir(directory):
        return
    keep = {os.path.basename(p) for p in keep}
    for name in os.listdir(directory):
        if name.endswith(".h5") and name not in keep:
            os.unlink(os.path.join(directory, name))
    if not os.listdir(directory):
        os.rmdir(directory)


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
        if isinstance(f.get("prompt"), h5py.Dataset):
            _check_parts(os.fspath(path), f)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        if "params" in attrs:
            attrs["params"] = json.loads(attrs["params"])
        out["attrs"] = attrs
        for name, ds in f.items():
            if isinstance(ds, h5py.Dataset):
                out[name] = dataset_values(ds)
        if "ranks" in f:
            out["ranks"] = {
                name: dataset_values(ds) for name, ds in f["ranks"].items()
            }
    return out


# --- Reading helpers for the result-file tools (inspect, export, scaling, data frames) ---

# ROW_DATASETS (every result file has them) and OPTIONAL_ROW_DATASETS (only sometimes) come
# from the schema (mpiswarm.schema); choice columns may be (N, n).
#: The root attribute that marks a result file, and the datasets every result file holds.
_MARK_ATTR = "mpiswarm_version"
_REQUIRED = ("prompt", "completion", "custom_id", "ok", "error")
#: Rows read at once by :func:`iter_rows` unless told otherwise.
DEFAULT_CHUNK_ROWS = 4096


class ResultFileError(InputError):
    """The path is missing, not HDF5, or not an mpiswarm result file (the message is one line
    and names the file)."""


def is_unanswered(error_kind: str) -> bool:
    """Whether a row's ``error_kind`` (its label, as read) says it was never finished (a
    resume would send it again), rather than failed for good."""
    return KIND_BY_LABEL.get(error_kind, ErrorKind.OTHER).unanswered


def dataset_values(ds: h5py.Dataset, selection=()):
    """``ds[selection]`` as readers get it: strings as ``str``, an enum column by label."""
    if ds.dtype == object:
        return ds.asstr()[selection]
    column = COLUMNS.get(ds.name.rsplit("/", 1)[-1])
    values = ds[selection]
    return labels(column, values) if column is not None and column.enum is not None else values


def _value(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


@contextmanager
def open_result_file(path: str | os.PathLike):
    """Open ``path`` read-only as an mpiswarm result file, else raise :class:`ResultFileError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ResultFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ResultFileError(f"{path}: is a directory, not an mpiswarm result file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ResultFileError(f"{path}: not an mpiswarm result file (not HDF5)") from None
    with f:
        missing = [name for name in _REQUIRED if not isinstance(f.get(name), h5py.Dataset)]
        if _MARK_ATTR not in f.attrs or missing:
            why = f"no '{_MARK_ATTR}' attribute" if _MARK_ATTR not in f.attrs else f"no '{missing[0]}' dataset"
            raise ResultFileError(f"{path}: not an mpiswarm result file ({why})")
        _check_parts(path, f)
        yield f


def _check_parts(path: str, f: h5py.File) -> None:
    """A virtual layout's rows are in part files beside it: HDF5 would read fill values for a
    missing one, silently, so a missing part is an error naming it."""
    prompt = f["prompt"]
    if not prompt.is_virtual:
        return
    here = os.path.dirname(os.path.abspath(path))
    for source in prompt.virtual_sources():
        where = os.path.join(here, source.file_name)
        if not os.path.isfile(where):
            raise ResultFileError(f"{path}: part file {source.file_name} is missing (a virtual layout: keep "
                                  f"{os.path.basename(path)}{PARTS_SUFFIX}/ beside the file)")


@dataclass
class ResultInfo:
    """A result file's metadata, without its rows: root attributes (``params`` decoded from
    JSON), the ``ranks`` table (row r = rank r; ``extra`` decoded), the row count, the
    completions per row ``n`` and the row datasets present."""

    path: str
    attrs: dict
    ranks: dict
    n_rows: int
    n: int
    columns: tuple

    def time(self, phase: str) -> float:
        """The wall-clock phase time ``time_<phase>_s`` (NaN if the file has none)."""
        return float(self.attrs.get(f"time_{phase}_s", float("nan")))


def read_info(path: str | os.PathLike) -> ResultInfo:
    """The metadata of the result file at ``path`` (:class:`ResultFileError` if it is not one)."""
    with open_result_file(path) as f:
        attrs = {k: _value(v) for k, v in f.attrs.items()}
        if isinstance(attrs.get("params"), str):
            attrs["params"] = json.loads(attrs["params"])
        ranks = {}
        if isinstance(f.get("ranks"), h5py.Group):
            for name, ds in f["ranks"].items():
                ranks[name] = dataset_values(ds)
            if "extra" in ranks:
                ranks["extra"] = [json.loads(x) if x else {} for x in ranks["extra"]]
        completion = f["completion"]
        return ResultInfo(
            path=os.fspath(path), attrs=attrs, ranks=ranks, n_rows=int(completion.shape[0]),
            n=int(completion.shape[1]) if completion.ndim == 2 else 1,
            columns=tuple(name for name in ROW_DATASETS + OPTIONAL_ROW_DATASETS
                          if isinstance(f.get(name), h5py.Dataset)),
        )


def iter_rows(path: str | os.PathLike, columns=ROW_DATASETS + OPTIONAL_ROW_DATASETS,
              chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """Yield ``(start, {column: array})`` for consecutive blocks of at most ``chunk_rows`` rows
    (strings as ``str``), so a file of any size is read a block at a time; columns the file
    lacks are left out. ``completion``, ``finish_reason`` and ``reasoning`` blocks are (k, n)
    when the file has several completions per row."""
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be >= 1")
    with open_result_file(path) as f:
        columns = [c for c in columns if isinstance(f.get(c), h5py.Dataset)]
        n_rows = f["prompt"].shape[0]
        for start in range(0, n_rows, chunk_rows):
            stop = min(start + chunk_rows, n_rows)
            yield start, {c: dataset_values(f[c], slice(start, stop)) for c in columns}


def write_self_contained(path: str | os.PathLike, output: str | os.PathLike,
                         chunk_rows: int = DEFAULT_CHUNK_ROWS * 64) -> int:
    """Copy the result file at ``path`` to ``output`` as one self-contained file: virtual
    datasets (a virtual layout's rows, in its part files) become ordinary ones, copied a block
    of rows at a time; everything else is copied as it is. Written atomically; returns the
    row count."""
    with open_result_file(path) as f, atomic_h5(output) as out:
        for name, item in f.items():
            if isinstance(item, h5py.Dataset) and item.is_virtual:
                ds = out.create_dataset(name, shape=item.shape, dtype=item.dtype, fillvalue=item.fillvalue)
                for start in range(0, item.shape[0], chunk_rows):
                    ds[start:start + chunk_rows] = item[start:start + chunk_rows]
            else:
                f.copy(item, out, name=name)
        for key, value in f.attrs.items():
            out.attrs[key] = value
        out.attrs["layout"] = "single"
        if "parts" in out.attrs:
            del out.attrs["parts"]
        return int(f["prompt"].shape[0])


def prompt_fingerprint(path: str | os.PathLike, sample: int = 1024) -> str:
    """A short digest of a result file's input: its row count and the prompts and custom_ids
    of up to ``sample`` rows spread evenly over the file (first and last included). Equal
    inputs give equal fingerprints; it reads at most ``sample`` rows."""
    with open_result_file(path) as f:
        n_rows = f["prompt"].shape[0]
        rows = np.unique(np.linspace(0, n_rows - 1, num=min(sample, n_rows)).astype(np.int64)) if n_rows else []
        digest = hashlib.blake2b(str(n_rows).encode(), digest_size=12)
        prompts, ids = f["prompt"].asstr(), f["custom_id"].asstr()
        for row in rows:
            for text in (prompts[row], ids[row]):
                data = text.encode("utf-8")
                digest.update(len(data).to_bytes(8, "little") + data)
        return digest.hexdigest()


def read_records(path: str | os.PathLike) -> list[dict]:
    """A result file as one dict a row, in input order: the row datasets (``completion`` and
    ``finish_reason`` as lists when n > 1) and, for an ensemble, ``source_row``, ``repeat``
    and ``seed``. Plain Python values."""
    data = read_results(path)
    columns = {name: data[name].tolist() for name in ROW_DATASETS if name in data}
    with h5py.File(path, "r") as f:
        if "ensemble" in f:
            for name in ("source_row", "repeat", "seed"):
                columns[name] = f["ensemble"][name][()].tolist()
    n_rows = len(columns["prompt"])
    return [{name: values[i] for name, values in columns.items()} for i in range(n_rows)]


def read_reduction(path: str | os.PathLike) -> dict:
    """Group ``reduce`` of a result file: ``{"final", "ok", "error", "complete", "levels":
    [{dataset: list} for level 1, 2, …]}`` (:class:`ResultFileError` when it has none)."""
    with open_result_file(path) as f:
        if "reduce" not in f:
            raise ResultFileError(f"{path}: holds no tree reduction (group 'reduce')")
        group = f["reduce"]
        levels = []
        for k in range(1, len(json.loads(group.attrs["level_sizes"])) + 1):
            level = group[f"level_{k}"]
            levels.append({name: dataset_values(ds).tolist()
                           for name, ds in level.items()})
        final = group["final"]
        return {"final": final.asstr()[()], "ok": bool(final.attrs["ok"]), "error": str(final.attrs["error"]),
                "complete": bool(group.attrs["complete"]), "levels": levels}
