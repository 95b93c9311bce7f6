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
from .wire import utf8_lengths

ENCODING = "utf-8"
#: Lone surrogates cannot be stored as UTF-8 (h5py refused them with an exception): '?'.
ERRORS = "replace"
#: HDF5's variable-length strings are C strings (h5py refuses a NUL in one, "VLEN strings do not
#: support embedded NULLs"): U+0000 is stored as U+FFFD, the replacement character.
NUL_REPLACEMENT = "\ufffd"


def storable(text: str) -> str:
    """``text`` as every string that reaches HDF5 is stored (the one rule, for every column,
    group and attribute): U+0000 becomes U+FFFD and a lone surrogate '?'. Packed strings follow
    it without becoming ``str``: :func:`_encode` turns lone surrogates into '?' (``ERRORS``) and
    flags a NUL, and the writer passes the strings of a flagged column through this function."""
    if "\x00" in text:
        text = text.replace("\x00", NUL_REPLACEMENT)
    if text.isascii():  # (O(1) in CPython) nothing else to replace
        return text
    try:
        text.encode(ENCODING)
    except UnicodeEncodeError:
        return text.encode(ENCODING, ERRORS).decode(ENCODING)
    return text

#: string columns on the wire: the records' own, and the optional reasoning (shaped like
#: ``completion``; all '' in a message whose sender has none, absent when no rank has any)
WIRE_STRINGS = STRING_COLUMNS + ("reasoning",)
# Message layout, every part 8-byte aligned: a header of int64 (rows, n, whether reasoning
# travels, then for each string column its bytes and whether a string holds a NUL itself), the
# 8-byte numeric columns, the string columns' byte lengths, the narrow numeric columns, the strings.
_HEAD = 3 + 2 * len(WIRE_STRINGS)
_DTYPES = {"index": np.int64, "prompt_tokens": np.int64, "completion_tokens": np.int64,
           "latency_s": np.float64, "rank": np.int32, "ok": np.bool_, "done": np.bool_}
_WIDE = [c for c in NUMERIC_COLUMNS if np.dtype(_DTYPES[c]).itemsize == 8]
_NARROW = [c for c in NUMERIC_COLUMNS if np.dtype(_DTYPES[c]).itemsize < 8]


def _entries(name: str, rows: int, n: int) -> int:
    """Strings a column holds for ``rows`` rows (``completion``/``finish_reason``: n a row)."""
    return rows * n if name in ("completion", "finish_reason", "reasoning") else rows


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
    has_reasoning: bool = False  # whether the reasoning column travelled (some rank had one)

    def __len__(self) -> int:
        return len(self.numeric["index"])

    def __getattr__(self, name):
        """Numeric columns as arrays; string columns decoded on use (as lists, like
        :class:`~mpiswarm.records.ResultColumns`; ``reasoning`` None when none travelled)."""
        numeric = self.__dict__.get("numeric", {})
        if name in numeric:
            return numeric[name]
        if name in WIRE_STRINGS and "strings" in self.__dict__:
            return None if name == "reasoning" and not self.has_reasoning else self.strings[name].decode()
        raise AttributeError(name)

    @classmethod
    def from_results(cls, results: ResultColumns) -> "PackedColumns":
        """Pack rows held locally (no MPI)."""
        reasoning = results.reasoning is not None
        return unpack_messages(np.frombuffer(pack_message(results, reasoning=reasoning), np.uint8), [0])

    @classmethod
    def empty(cls, n: int) -> "PackedColumns":
        return cls.from_results(ResultColumns.pending(np.zeros(0, np.int64), n, 0))

    def take(self, positions: np.ndarray) -> "PackedColumns":
        """The rows at ``positions``, in that order (offsets move, strings do not)."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = (positions[:, None] * self.n + np.arange(self.n)).ravel()
        return PackedColumns(
            self.n, {c: v[positions] for c, v in self.numeric.items()},
            {c: s.take(flat if _entries(c, 1, self.n) == self.n else positions)
             if c != "reasoning" or self.has_reasoning else s for c, s in self.strings.items()},
            self.has_reasoning)

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
                             **{c: self.numeric[c] for c in NUMERIC_COLUMNS},
                             reasoning=self.strings["reasoning"].decode() if self.has_reasoning else None)


def _encode(strings: list[str]) -> tuple[np.ndarray, bytes, bool]:
    """(byte lengths, the UTF-8 bytes with a NUL after each string, whether a string holds a
    NUL itself). Each string is encoded once: its byte length comes with it."""
    if not strings:
        return np.zeros(0, np.int64), b"", False
    joined = "\0".join(strings)
    if joined.isascii():  # (O(1) in CPython) one byte a character: no string encoded alone
        lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
        raw = joined.encode("ascii") + b"\0"
        return lengths, raw, raw.count(0) != len(strings)
    # Encoded in one go, the byte lengths read off where the NULs fell (half the cost of
    # encoding each string, for answers with a few accents); a string holding a NUL of its own
    # would shift them, so then each is encoded alone.
    raw = joined.encode(ENCODING, ERRORS) + b"\0"
    del joined
    ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0)
    if len(ends) == len(strings):
        lengths = np.diff(ends, prepend=-1) - 1
        return lengths, raw, False
    encoded = [s.encode(ENCODING, ERRORS) for s in strings]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return lengths, b"\0".join(encoded) + b"\0", True


def pack_message(results: ResultColumns, start: int = 0, stop: int | None = None, reasoning: bool = False) -> bytes:
    """Rows ``start:stop`` of ``results`` as one message (see the module's layout).
    ``reasoning``: carry the reasoning column ('' where ``results`` has none)."""
    stop = len(results) if stop is None else stop
    rows, n = stop - start, results.n
    packed = {}
    for c in WIRE_STRINGS:
        column = getattr(results, c)
        if column is None:  # reasoning on a rank that has none: empty strings, nothing to encode
            k = _entries(c, rows, n) if reasoning else 0
            packed[c] = np.zeros(k, np.int64), b"\0" * k, False
        elif c == "reasoning" and not reasoning:
            packed[c] = np.zeros(0, np.int64), b"", False
        else:
            packed[c] = _encode(column[_entries(c, start, n):_entries(c, stop, n)])
    head = np.array([rows, n, reasoning, *(len(packed[c][1]) for c in WIRE_STRINGS),
                     *(packed[c][2] for c in WIRE_STRINGS)], dtype=np.int64)
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


def row_bytes(results: ResultColumns, reasoning: bool = False) -> np.ndarray:
    """Each row's share of a :func:`pack_message` message, in bytes (int64, at least what it
    takes: a lone surrogate counts 3 bytes, stored as 1): what sizes a round by bytes. The
    message adds :data:`MESSAGE_OVERHEAD`."""
    rows, n = len(results), results.n
    fixed = 8 * len(_WIDE) + sum(np.dtype(_DTYPES[c]).itemsize for c in _NARROW)
    sizes = np.full(rows, fixed, dtype=np.int64)
    for c in WIRE_STRINGS:
        column = getattr(results, c)
        if c == "reasoning" and not reasoning:
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
    k_cols = len(WIRE_STRINGS)
    rows = heads[:, 0]
    n = int(heads[0, 1]) if len(heads) else 1
    has_reasoning = bool(heads[:, 2].any())
    nbytes, nuls = heads[:, 3:3 + k_cols], heads[:, 3 + k_cols:]
    at = offsets + 8 * _HEAD
    numeric, lengths, entries = {}, {}, {}
    views = {np.dtype(t): buffer.view(t) if np.dtype(t).itemsize == 1 else buffer[: len(buffer) // np.dtype(t).itemsize
             * np.dtype(t).itemsize].view(t) for t in set(_DTYPES.values())}
    for c in _WIDE:
        numeric[c] = views[np.dtype(_DTYPES[c])][_ranges(at // 8, rows)]
        at = at + 8 * rows
    for c in WIRE_STRINGS:
        travels = heads[:, 2] if c == "reasoning" else 1  # reasoning: only in messages that carry it
        entries[c] = (rows * n if _entries(c, 1, n) == n else rows) * travels
        lengths[c] = words[_ranges(at // 8, entries[c])]
        at = at + 8 * entries[c]
    for c in _NARROW:
        size = np.dtype(_DTYPES[c]).itemsize
        numeric[c] = views[np.dtype(_DTYPES[c])][_ranges(at // size, rows)]
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
    return PackedColumns(n, numeric, strings, has_reasoning)
