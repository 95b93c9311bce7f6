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

from .records import NUMERIC_COLUMNS, STRING_COLUMNS, ResultColumns

ENCODING = "utf-8"
#: Lone surrogates cannot be stored as UTF-8 (h5py refused them with an exception): '?'.
ERRORS = "replace"

# Message layout, every part 8-byte aligned: a header of int64 (rows, n, string bytes of each
# string column, whether each holds a NUL inside a string), the 8-byte numeric columns, the string columns' byte lengths, the rest.
_HEAD = 2 + 2 * len(STRING_COLUMNS)
_DTYPES = {"index": np.int64, "prompt_tokens": np.int64, "completion_tokens": np.int64,
           "latency_s": np.float64, "rank": np.int32, "ok": np.bool_, "done": np.bool_}
_WIDE = [c for c in NUMERIC_COLUMNS if np.dtype(_DTYPES[c]).itemsize == 8]
_NARROW = [c for c in NUMERIC_COLUMNS if np.dtype(_DTYPES[c]).itemsize < 8]


def _entries(name: str, rows: int, n: int) -> int:
    """Strings a column holds for ``rows`` rows (``completion``/``finish_reason``: n a row)."""
    return rows * n if name in ("completion", "finish_reason") else rows


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
        lengths, raw, has_nul = _encode(strings)
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        return cls(np.frombuffer(raw, dtype=np.uint8), starts, lengths, has_nul)

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, positions) -> "PackedStrings":
        """The strings at ``positions`` (same buffer, nothing copied but the offsets)."""
        return PackedStrings(self.data, self.starts[positions], self.lengths[positions], self.has_nul)

    def decode(self) -> list[str]:
        """The strings as Python ``str`` (for callers that want them; the writer does not)."""
        view = memoryview(self.data)
        return [str(view[a:a + k], ENCODING, ERRORS) for a, k in zip(self.starts.tolist(), self.lengths.tolist())]

    def pointers(self) -> np.ndarray:
        """``char *`` of each string (NUL-terminated in ``data``), for an HDF5 write with a
        variable-length C-string memory type. Valid while ``data`` lives; the caller keeps
        this object alive during the write."""
        base = self.data.ctypes.data if len(self.data) else 0
        return (self.starts + base).astype(np.uintp)


@dataclass
class PackedColumns:
    """Result rows as in :class:`~mpiswarm.records.ResultColumns`, strings packed
    (:class:`PackedStrings`). ``completion``/``finish_reason`` hold ``n`` strings a row."""

    n: int
    numeric: dict  # column -> array, one entry a row
    strings: dict  # column -> PackedStrings

    def __len__(self) -> int:
        return len(self.numeric["index"])

    def __getattr__(self, name):
        numeric = self.__dict__.get("numeric", {})
        if name in numeric:
            return numeric[name]
        raise AttributeError(name)

    @classmethod
    def from_results(cls, results: ResultColumns) -> "PackedColumns":
        """Pack rows held locally (no MPI)."""
        return unpack_messages(np.frombuffer(pack_message(results), np.uint8), [0])

    @classmethod
    def concat(cls, parts: list["PackedColumns"], n: int) -> "PackedColumns":
        """Rows of every part, one after the other; string buffers stay where they are when
        the parts share one (as the parts of one received buffer do)."""
        if not parts:
            return cls.empty(n)
        numeric = {c: np.concatenate([p.numeric[c] for p in parts]) for c in NUMERIC_COLUMNS}
        strings = {}
        for c in STRING_COLUMNS:
            cols = [p.strings[c] for p in parts]
            data = cols[0].data
            if all(s.data is data for s in cols):
                strings[c] = PackedStrings(data, np.concatenate([s.starts for s in cols]),
                                           np.concatenate([s.lengths for s in cols]), any(s.has_nul for s in cols))
            else:
                strings[c] = PackedStrings.pack([x for s in cols for x in s.decode()])
        return cls(n, numeric, strings)

    @classmethod
    def empty(cls, n: int) -> "PackedColumns":
        return cls.from_results(ResultColumns.pending(np.zeros(0, np.int64), n, 0))

    def take(self, positions: np.ndarray) -> "PackedColumns":
        """The rows at ``positions``, in that order (offsets move, strings do not)."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = (positions[:, None] * self.n + np.arange(self.n)).ravel()
        return PackedColumns(
            self.n, {c: v[positions] for c, v in self.numeric.items()},
            {c: s.take(flat if _entries(c, 1, self.n) == self.n else positions) for c, s in self.strings.items()})

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
        return ResultColumns(n=self.n, **{c: self.strings[c].decode() for c in STRING_COLUMNS},
                             **{c: self.numeric[c] for c in NUMERIC_COLUMNS})


def _encode(strings: list[str]) -> tuple[np.ndarray, bytes, bool]:
    """(byte lengths, the UTF-8 bytes with a NUL after each string, whether a string holds a
    NUL itself). Each string is encoded once: its byte length comes with it."""
    if not strings:
        return np.zeros(0, np.int64), b"", False
    joined = "\0".join(strings)
    if joined.isascii():  # (O(1) in CPython) one byte a character: no string encoded alone
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        raw = joined.encode("ascii") + b"\0"
    else:
        del joined
        encoded = [s.encode(ENCODING, ERRORS) for s in strings]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        raw = b"\0".join(encoded) + b"\0"
    return lengths, raw, raw.count(0) != len(strings)


def pack_message(results: ResultColumns, start: int = 0, stop: int | None = None) -> bytes:
    """Rows ``start:stop`` of ``results`` as one message (see the module's layout)."""
    stop = len(results) if stop is None else stop
    rows, n = stop - start, results.n
    packed = {c: _encode(getattr(results, c)[_entries(c, start, n):_entries(c, stop, n)]) for c in STRING_COLUMNS}
    head = np.array([rows, n, *(len(packed[c][1]) for c in STRING_COLUMNS), *(packed[c][2] for c in STRING_COLUMNS)],
                    dtype=np.int64)
    parts = [head.tobytes()]
    parts += [np.ascontiguousarray(getattr(results, c)[start:stop], _DTYPES[c]).tobytes() for c in _WIDE]
    parts += [packed[c][0].tobytes() for c in STRING_COLUMNS]
    for c in _NARROW:
        raw = np.ascontiguousarray(getattr(results, c)[start:stop], _DTYPES[c]).tobytes()
        parts += [raw, b"\0" * _pad8(len(raw))]
    for c in STRING_COLUMNS:
        raw = packed[c][1]
        parts += [raw, b"\0" * _pad8(len(raw))]
    return b"".join(parts)


def unpack_messages(buffer: np.ndarray, offsets) -> PackedColumns:
    """Every message of ``buffer`` (uint8; messages start at ``offsets``), their rows one
    after the other. The strings stay in ``buffer``."""
    parts = []
    n = 1
    for at in offsets:
        at = int(at)
        head = np.frombuffer(buffer, np.int64, _HEAD, at)
        k_cols = len(STRING_COLUMNS)
        rows, n = int(head[0]), int(head[1])
        nbytes, nuls = head[2:2 + k_cols].tolist(), head[2 + k_cols:].tolist()
        at += 8 * _HEAD
        numeric, lengths = {}, {}
        for c in _WIDE:
            numeric[c] = np.frombuffer(buffer, _DTYPES[c], rows, at)
            at += 8 * rows
        for c in STRING_COLUMNS:
            lengths[c] = np.frombuffer(buffer, np.int64, _entries(c, rows, n), at)
            at += lengths[c].nbytes
        for c in _NARROW:
            numeric[c] = np.frombuffer(buffer, _DTYPES[c], rows, at)
            at += numeric[c].nbytes + _pad8(numeric[c].nbytes)
        strings = {}
        for c, k, nul in zip(STRING_COLUMNS, nbytes, nuls):
            starts = np.empty(len(lengths[c]), dtype=np.int64)
            if len(starts):
                starts[0] = 0
                np.cumsum(lengths[c][:-1] + 1, out=starts[1:])
                starts += at
            strings[c] = PackedStrings(buffer, starts, lengths[c], bool(nul))
            at += k + _pad8(k)
        parts.append(PackedColumns(n, numeric, strings))
    return PackedColumns.concat(parts, n) if len(parts) != 1 else parts[0]
