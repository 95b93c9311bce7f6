"""The result schema: every column of a result row, in one table.

Every writer and reader derives its columns from :data:`RESULT_COLUMNS` and
:data:`INPUT_COLUMNS`: the in-memory rows (:class:`mpiswarm.records.ResultColumns`), the
gather message and the checkpoint records (:mod:`mpiswarm.packed`, one binary format for
both), the result file's datasets in both layouts and its readers (:mod:`mpiswarm.store`),
every export format (:mod:`mpiswarm.export`) and the tree reduction's levels. Adding a column
is one entry here plus the code that produces its value; ``tests/unit/test_schema.py`` checks
that every format carries every column.

A column holds one entry a row (``per="row"``) or ``n`` a row (``per="choice"``: choice *j*
of row *i* is entry ``i * n + j``, row-major; a (N, n) dataset when n > 1). String columns
are stored by the one NUL rule (:func:`mpiswarm.codec.storable`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .errors import ErrorKind

STR = "str"
ROW, CHOICE = "row", "choice"


@dataclass(frozen=True)
class Column:
    """One column of the result rows.

    ``fill``: a row's value before it is answered (a pending row, and a file's fill value).
    ``null``: the value meaning "unknown", null in JSON and empty in CSV. ``stored``: a dataset of the result file (``index`` is the row's position, ``done`` lives
    in checkpoints only). ``optional``: in memory, on the wire and in files only once some
    row has a value (``reasoning``). ``reduce_as``: the dataset name in a tree reduction's
    level (None: not there). ``enum``: an :class:`enum.IntEnum` the integers stand for,
    stored as an HDF5 enum type and exported by label."""

    name: str
    dtype: str
    per: str = ROW
    fill: object = None
    stored: bool = True
    optional: bool = False
    reduce_as: str | None = None
    enum: type | None = None
    null: object = None  # the value that means "unknown", exported as null (NaN: any NaN)
    json: bool = False  # a string column holding JSON ('' for none): exported as the value it encodes
    doc: str = ""

    @property
    def is_string(self) -> bool:
        return self.dtype == STR

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(object) if self.is_string else np.dtype(self.dtype)

    def entries(self, rows: int, n: int) -> int:
        """How many entries ``rows`` rows hold."""
        return rows * n if self.per == CHOICE else rows


#: The columns a request produces, in the order the file lists them.
RESULT_COLUMNS: tuple[Column, ...] = (
    Column("index", "int64", fill=-1, stored=False, doc="the row's number in the input (its position in the file)"),
    Column("completion", STR, CHOICE, fill="", reduce_as="text", doc="the answer text, n a row"),
    Column("finish_reason", STR, CHOICE, fill="", reduce_as="finish_reason",
           doc="why generation stopped (stop, length, …), shaped like completion"),
    Column("ok", "bool", fill=False, reduce_as="ok", doc="answered"),
    Column("error", STR, fill="not attempted", reduce_as="error", doc="why the row has no answer, one line ('' if ok)"),
    Column("error_kind", "int8", fill=int(ErrorKind.NOT_ATTEMPTED), enum=ErrorKind, reduce_as="error_kind",
           doc="what kind of failure (mpiswarm.errors.ErrorKind: timeout, http_client, context_length, "
               "bad_reply, not_answered, …; '' if ok)"),
    Column("http_status", "int16", fill=-1, reduce_as="http_status", null=-1,
           doc="the HTTP status of the failed call (-1: none, or answered)"),
    Column("chat", "bool", fill=False,
           doc="sent to a chat route (/v1/chat/completions or its /batch): a chat row, or any row under --api chat"),
    Column("done", "bool", fill=False, stored=False,
           doc="finished for good: answered, or failed in a way a retry cannot fix (checkpoints)"),
    Column("rank", "int32", fill=-1, reduce_as="rank", doc="the rank that served the row"),
    Column("prompt_tokens", "int64", fill=-1, null=-1, doc="prompt tokens (-1: unknown, as for rows of a list call)"),
    Column("completion_tokens", "int64", fill=-1, null=-1, doc="completion tokens (-1: unknown)"),
    Column("latency_s", "float64", fill=float("nan"), reduce_as="latency_s", null=float("nan"),
           doc="seconds of the HTTP call that carried the row (NaN: never sent)"),
    Column("reasoning", STR, CHOICE, fill="", optional=True,
           doc="a reasoning model's reasoning (chat), shaped like completion; only when some row has one"),
    Column("logprobs", STR, CHOICE, fill="", optional=True, json=True,
           doc="the choice's logprobs as the server returned them, as JSON ('' where none was asked): "
               "completions {tokens, token_logprobs, top_logprobs, text_offset}, chat {content: [{token, "
               "logprob, bytes, top_logprobs}]}; shaped like completion; only when some row asked for them"),
)

#: The columns that come from the input row, stored beside the results.
INPUT_COLUMNS: tuple[Column, ...] = (
    Column("custom_id", STR, fill="", doc="the row's custom_id (an OpenAI Batch row's, else its line number)"),
    Column("prompt", STR, fill="", doc="the prompt as sent (after --template / --prompt-format)"),
)

COLUMNS = {c.name: c for c in RESULT_COLUMNS + INPUT_COLUMNS}
STRING_COLUMNS = tuple(c.name for c in RESULT_COLUMNS if c.is_string)
NUMERIC_COLUMNS = tuple(c.name for c in RESULT_COLUMNS if not c.is_string)
OPTIONAL_COLUMNS = tuple(c.name for c in RESULT_COLUMNS if c.optional)

#: Datasets of a result file, in order: the input's, then the stored result columns (optional
#: ones only in files whose rows have them).
FILE_COLUMNS: tuple[Column, ...] = INPUT_COLUMNS + tuple(c for c in RESULT_COLUMNS if c.stored)
ROW_DATASETS = tuple(c.name for c in FILE_COLUMNS if not c.optional)
OPTIONAL_ROW_DATASETS = tuple(c.name for c in FILE_COLUMNS if c.optional)
#: A tree reduction's level datasets that are result columns: (column, dataset name).
REDUCE_COLUMNS = tuple((c, c.reduce_as) for c in RESULT_COLUMNS if c.reduce_as)


def file_dtype(column: Column):
    """The HDF5 dtype of ``column``'s dataset (h5py's UTF-8 strings, an enum type for enums)."""
    import h5py  # (h5py only where files are written or read)

    if column.is_string:
        return h5py.string_dtype("utf-8")
    if column.enum is not None:
        return h5py.enum_dtype({k.label or "none": int(k) for k in column.enum}, basetype=column.dtype)
    return column.np_dtype


def labels(column: Column, values: np.ndarray) -> np.ndarray:
    """An enum column's integers as their labels (object array of ``str``); others unchanged."""
    if column.enum is None:
        return values
    table = np.array([""] * (max(column.enum) + 1), dtype=object)
    for kind in column.enum:
        table[int(kind)] = kind.label
    return table[np.clip(np.asarray(values, dtype=np.int64), 0, len(table) - 1)]


def plain(column: Column, value):
    """One entry of ``column`` as a plain Python value, None where it means "unknown" (a JSON
    column: the value it encodes, None for '')."""
    if column.json:
        return json.loads(value) if value else None
    if column.is_string or column.enum is not None:
        return value
    if column.dtype == "bool":
        return bool(value)
    if column.np_dtype.kind == "f":
        value = float(value)
        return None if column.null is not None and not math.isfinite(value) else value
    value = int(value)
    return None if column.null is not None and value == column.null else value
