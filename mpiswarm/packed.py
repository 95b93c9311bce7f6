"""Result rows as packed bytes: the form in which they travel to rank 0 and reach the file.

A rank packs its :class:`~mpiswarm.records.ResultColumns` into ONE byte message (numeric
columns as raw arrays, each string column as UTF-8 bytes with a NUL after every string plus
the byte lengths). Rank 0 receives every rank's message into one buffer and keeps the strings
there: :class:`PackedStrings` are offsets into that buffer, so sorting the rows by index
permutes offsets, never strings, and the HDF5 writer hands HDF5 pointers into the buffer
(variable-length C strings) — no Python object per string on rank 0 (issue 7: building a
million ``str`` objects and converting them back cost more than the write itself).

MPI-free: the collectives are in :mod:`mpiswarm.gather`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .records import ResultColumns
from .schema import COLUMNS, NUMERIC_COLUMNS, OPTIONAL_COLUMNS, STRING_COLUMNS
from .codec import decode_stored, encode_terminated, utf8_lengths

#: string columns on the wire, in schema order; an optional one (reasoning) travels in the
#: messages of a gather only when some rank has it ('' for the rows of a sender without it)
WIRE_STRINGS = STRING_COLUMNS
_OPTIONAL = frozenset(OPTIONAL_COLUMNS)
# Message layout, every part 8-byte aligned: a header of int64 (rows, n, then for each string
# column its bytes, whether a string holds a NUL itself and whether the column travels), the
# 8-byte numeric columns, the string columns' byte lengths, the narrow numeric columns, the strings.
_HEAD = 2 + 3 * len(WIRE_STRINGS)
_DTYPES = {c: COLUMNS[c].np_dtype for c in NUMERIC_COLUMNS}
_WIDE = [c for c in NUMERIC_COLUMNS if _DTYPES[c].itemsize == 8]
_NARROW = [c for c in NUMERIC_COLUMNS if _DTYPES[c].itemsize < 8]
_PER_CHOICE = frozenset(c for c in WIRE_STRINGS if COLUMNS[c].per == "choice")


def _entries(name: str, rows: int, n: int) -> int:
    """Strings a column holds for ``rows`` rows (``completion``/``finish_reason``: n a row)."""
    return rows * n if name in _PER_CHOICE else rows


def _pad8(k: int) -> int:
    return -k % 8


@dataclass
class PackedStrings:
    """Strings held as byte ranges of one buffer: string i is ``data[starts[i]:starts[i] +
    lengths[i]]`` (UTF-8), always followed by a NUL byte. ``has_nul`` says some string holds
    a NUL of its own (HDF5's C strings would cut it there)."""

    data: np.ndarray  # uint8
    starts: np.ndarray  # int64
    lengths: np.ndarray  # int64
    has_nul: bool = False

    @classmethod
    def pack(cls, strings: list[str]) -> "PackedStrings":
        """Encode ``strings`` (no MPI)."""
        lengths, raw, has_nul = encode_terminated(strings)
        return cls.from_lengths(np.frombuffer(raw, dtype=np.uint8), lengths, has_nul)

    @classmethod
    def from_lengths(cls, data: np.ndarray, lengths: np.ndarray, has_nul: bool = False) -> "PackedStrings":
        """Strings laid end to end in ``data``, each followed by its NUL, of byte ``lengths``."""
        step = lengths + 1
        return cls(data, np.cumsum(step) - step, lengths, has_nul)

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, positions) -> "PackedStrings":
        """The strings at ``positions`` (same buffer, nothing copied but the offsets)."""
        return PackedStrings(self.data, self.starts[positions], self.lengths[positions], self.has_nul)

    def decode(self) -> list[str]:
        """The strings as Python ``str`` (for callers that want them; the writer does not)."""
        view = memoryview(self.data)
        return [decode_stored(view, a, k) for a, k in zip(self.starts.tolist(), self.lengths.tolist())]

    def pointers(self) -> np.ndarray:
        """``char *`` of each string (NUL-terminated in ``data``), for an HDF5 write with a
        variable-length C-string memory type. Valid while ``data`` lives; the caller keeps
        this object alive during the write."""
        base = self.data.ctypes.data if len(self.data) else 0
        return (self.starts + base).astype(np.uintp)


@dataclass
class PackedColumns:
    """Result rows as in :class:`~mpiswarm.records.ResultColumns`, strings packed
    (:class:`PackedStrings`): the form rank 0 receives and writes. ``carried``: the optional
    columns that travelled (some sender had them). Columns read as attributes, as on
    :class:`~mpiswarm.records.ResultColumns` (strings decoded on use, an optional column that
    did not travel None)."""

    n: int
    numeric: dict  # column -> array, one entry a row
    strings: dict  # column -> PackedStrings
    carried: frozenset = frozenset()

    def __len__(self) -> int:
        return len(self.numeric["index"])

    @property
    def has_reasoning(self) -> bool:
        return "reasoning" in self.carried

    def decoded(self, name: str) -> list[str] | None:
        """String column ``name`` as Python ``str`` (None: an optional column that did not travel)."""
        if name in _OPTIONAL and name not in self.carried:
            return None
        return self.strings[name].decode()

    @classmethod
    def from_results(cls, results: ResultColumns) -> "PackedColumns":
        """Pack rows held locally (no MPI)."""
        return unpack_messages(np.frombuffer(pack_message(results, optional=carried(results)), np.uint8), [0])

    @classmethod
    def empty(cls, n: int) -> "PackedColumns":
        return cls.from_results(ResultColumns.pending(np.zeros(0, np.int64), n, 0))

    def take(self, positions: np.ndarray) -> "PackedColumns":
        """The rows at ``positions``, in that order (offsets move, strings do not)."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = (positions[:, None] * self.n + np.arange(self.n)).ravel()
        return PackedColumns(
            self.n, {c: v[positions] for c, v in self.numeric.items()},
            {c: s.take(flat if c in _PER_CHOICE else positions) if c not in _OPTIONAL or c in self.carried else s
             for c, s in self.strings.items()},
            self.carried)

    def in_index_order(self) -> "PackedColumns":
        index = self.numeric["index"]
        if len(index) < 2 or bool(np.all(index[1:] > index[:-1])):
            return self
        return self.take(np.argsort(index, kind="stable"))

    def failed_errors(self) -> list[str]:
        """The ``error`` of every row failed for good (done, not ok)."""
        rows = np.flatnonzero(self.numeric["done"] & ~self.numeric["ok"])
        return self.strings["error"].take(rows).decode()

    def to_results(self) -> ResultColumns:
        """Back to :class:`~mpiswarm.records.ResultColumns` (strings decoded)."""
        strings = {c: self.decoded(c) for c in WIRE_STRINGS}
        return ResultColumns(self.n, **self.numeric, **{c: v for c, v in strings.items() if v is not None})


def _column_property(name: str) -> property:
    if name in _DTYPES:
        return property(lambda self: self.numeric[name], doc=f"column ``{name}`` (an array)")
    return property(lambda self: self.decoded(name), doc=f"column ``{name}``, decoded")


for _name in NUMERIC_COLUMNS + WIRE_STRINGS:  # the schema's columns as attributes
    setattr(PackedColumns, _name, _column_property(_name))


def carried(results: ResultColumns) -> tuple[str, ...]:
    """The optional columns ``results`` has."""
    return tuple(c for c in OPTIONAL_COLUMNS if getattr(results, c) is not None)


def pack_message(results: ResultColumns, start: int = 0, stop: int | None = None,
                 optional: tuple[str, ...] = ()) -> bytes:
    """Rows ``start:stop`` of ``results`` as one message (see the module's layout).
    ``optional``: the optional columns to carry ('' where ``results`` has none)."""
    stop = len(results) if stop is None else stop
    rows, n = stop - start, results.n
    packed, travels = {}, {}
    for c in WIRE_STRINGS:
        column = getattr(results, c)
        travels[c] = c not in _OPTIONAL or c in optional
        if not travels[c]:
            packed[c] = np.zeros(0, np.int64), b"", False
        elif column is None:  # an optional column this sender has none of: empty strings
            k = _entries(c, rows, n)
            packed[c] = np.zeros(k, np.int64), b"\0" * k, False
        else:
            packed[c] = encode_terminated(column[_entries(c, start, n):_entries(c, stop, n)])
    head = np.array([rows, n, *(x for c in WIRE_STRINGS for x in (len(packed[c][1]), packed[c][2], travels[c]))],
                    dtype=np.int64)
    parts = [head.tobytes()]
    parts += [np.ascontiguousarray(getattr(results, c)[start:stop], _DTYPES[c]).tobytes() for c in _WIDE]
    parts += [packed[c][0].tobytes() for c in WIRE_STRINGS]
    for c in _NARROW:
        raw = np.ascontiguousarray(getattr(results, c)[start:stop], _DTYPES[c]).tobytes()
        parts += [raw, b"\0" * _pad8(len(raw))]
    for c in WIRE_STRINGS:
        raw = packed[c][1]
        parts += [raw, b"\0" * _pad8(len(raw))]
    return b"".join(parts)


#: bytes of a message beyond its rows' (header, padding): what a byte quota keeps free
MESSAGE_OVERHEAD = 8 * (_HEAD + len(_NARROW) + len(WIRE_STRINGS))


def row_bytes(results: ResultColumns, optional: tuple[str, ...] = ()) -> np.ndarray:
    """Each row's share of a :func:`pack_message` message, in bytes (int64, at least what it
    takes: a lone surrogate counts 3 bytes, stored as 1): what sizes a round by bytes. The
    message adds :data:`MESSAGE_OVERHEAD`."""
    rows, n = len(results), results.n
    fixed = 8 * len(_WIDE) + sum(_DTYPES[c].itemsize for c in _NARROW)
    sizes = np.full(rows, fixed, dtype=np.int64)
    for c in WIRE_STRINGS:
        column = getattr(results, c)
        if c in _OPTIONAL and c not in optional:
            continue
        k = _entries(c, 1, n)
        sizes += 9 * k  # a length and a NUL per string
        if column is not None and rows:
            sizes += utf8_lengths(column).reshape(rows, k).sum(axis=1)
    return sizes


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + k) for s, k in zip(starts, counts)])``, vectorized."""
    total = int(counts.sum())
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    return np.repeat(starts - first, counts) + np.arange(total, dtype=np.int64)


def unpack_messages(buffer: np.ndarray, offsets) -> PackedColumns:
    """Every message of ``buffer`` (uint8, 8-byte aligned; messages start at ``offsets``), their
    rows one after the other. The strings stay in ``buffer``.

    Vectorized over the messages (a handful of numpy operations a column, whatever their
    number): rank 0 parses one message a rank every round, and at thousands of ranks a Python
    loop over them would cost more than the rows (see README, the scale model)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    if buffer.ctypes.data % 8 or (offsets % 8).any():
        buffer = np.frombuffer(buffer.tobytes(), np.uint8)  # (only unaligned callers pay a copy)
    words = buffer[: len(buffer) // 8 * 8].view(np.int64)
    heads = words[(offsets // 8)[:, None] + np.arange(_HEAD)]
    rows = heads[:, 0]
    n = int(heads[0, 1]) if len(heads) else 1
    nbytes, nuls, travels = (heads[:, 2 + j::3] for j in range(3))
    carried_here = frozenset(c for j, c in enumerate(WIRE_STRINGS) if c in _OPTIONAL and travels[:, j].any())
    at = offsets + 8 * _HEAD
    numeric, lengths, entries = {}, {}, {}
    views = {t: buffer.view(t) if t.itemsize == 1 else buffer[: len(buffer) // t.itemsize * t.itemsize].view(t)
             for t in set(_DTYPES.values())}
    for c in _WIDE:
        numeric[c] = views[_DTYPES[c]][_ranges(at // 8, rows)]
        at = at + 8 * rows
    for j, c in enumerate(WIRE_STRINGS):
        entries[c] = (rows * n if c in _PER_CHOICE else rows) * travels[:, j]
        lengths[c] = words[_ranges(at // 8, entries[c])]
        at = at + 8 * entries[c]
    for c in _NARROW:
        size = _DTYPES[c].itemsize
        numeric[c] = views[_DTYPES[c]][_ranges(at // size, rows)]
        at = at + size * rows + (-(size * rows) % 8)
    strings = {}
    for j, c in enumerate(WIRE_STRINGS):
        # within a message each string starts after the previous one and its NUL
        step = lengths[c] + 1
        starts = np.cumsum(step) - step
        first = np.zeros(len(offsets), dtype=np.int64)
        np.cumsum(entries[c][:-1], out=first[1:])
        base = starts[np.minimum(first, max(len(starts) - 1, 0))] if len(starts) else np.zeros(len(offsets), np.int64)
        starts += np.repeat(at - base, entries[c])
        strings[c] = PackedStrings(buffer, starts, lengths[c], bool(nuls[:, j].any()))
        at = at + nbytes[:, j] + (-nbytes[:, j] % 8)
    return PackedColumns(n, numeric, strings, carried_here)
