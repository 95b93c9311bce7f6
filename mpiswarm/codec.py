"""The one codec of strings and row messages: every rule for turning text into bytes is here.

Two rules, each in one function:

* **Between ranks, input rows are lossless**: UTF-8 with ``surrogatepass`` (:data:`ERRORS`), so
  any string Python holds crosses unchanged (:func:`pack_strings`, :func:`join_strings`,
  :func:`pack_rows`); a prompt with a lone surrogate is refused where it is read
  (:func:`first_unencodable`), never sent.
* **What reaches HDF5 is storable** (:func:`storable`): HDF5's strings are C strings, so U+0000
  becomes U+FFFD, and UTF-8 cannot hold a lone surrogate, which becomes '?'. Result rows are
  encoded by that rule once, on the rank that holds them (:func:`encode_terminated`, for
  :mod:`mpiswarm.packed`): the gather message and the checkpoint records carry what the file
  will hold.

Lengths count characters (not bytes) where the receiver decodes a whole buffer once and slices
the resulting ``str`` — no per-string decode, no pickling.
"""
from __future__ import annotations

import struct
from itertools import accumulate

import numpy as np

from .rows import RequestRows

ENCODING = "utf-8"
#: between ranks: any Python string round-trips
ERRORS = "surrogatepass"
#: into HDF5: a lone surrogate becomes '?'
STORED_ERRORS = "replace"
#: HDF5's variable-length strings are C strings (h5py refuses a NUL in one, "VLEN strings do not
#: support embedded NULLs"): U+0000 is stored as U+FFFD, the replacement character.
NUL_REPLACEMENT = "\ufffd"


def storable(text: str) -> str:
    """``text`` as every string that reaches HDF5 is stored (the one rule, for every column,
    group and attribute): U+0000 becomes U+FFFD and a lone surrogate '?'. Packed result strings
    follow it without becoming ``str``: :func:`encode_terminated` turns lone surrogates into '?'
    and flags a NUL, and the writer passes the strings of a flagged column through this function."""
    if "\x00" in text:
        text = text.replace("\x00", NUL_REPLACEMENT)
    if text.isascii():  # (O(1) in CPython) nothing else to replace
        return text
    try:
        text.encode(ENCODING)
    except UnicodeEncodeError:
        return text.encode(ENCODING, STORED_ERRORS).decode(ENCODING)
    return text


def encode_terminated(strings: list[str]) -> tuple[np.ndarray, bytes, bool]:
    """(byte lengths, the UTF-8 bytes with a NUL after each string, whether a string holds a
    NUL itself), lone surrogates as '?' (the storable rule). Each string is encoded once: its
    byte length comes with it."""
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
    raw = joined.encode(ENCODING, STORED_ERRORS) + b"\0"
    del joined
    ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0)
    if len(ends) == len(strings):
        lengths = np.diff(ends, prepend=-1) - 1
        return lengths, raw, False
    encoded = [s.encode(ENCODING, STORED_ERRORS) for s in strings]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return lengths, b"\0".join(encoded) + b"\0", True


def decode_stored(data, start: int, length: int) -> str:
    """One string of :func:`encode_terminated`'s bytes."""
    return str(data[start:start + length], ENCODING, STORED_ERRORS)


def join_strings(strings: list[str]) -> tuple[bytes, np.ndarray]:
    """(the strings' UTF-8 with a NUL between them, their character lengths), lossless."""
    return "\0".join(strings).encode(ENCODING, ERRORS), np.fromiter(map(len, strings), np.int64, len(strings))


def split_strings(buffer, lengths: np.ndarray) -> list[str]:
    """Inverse of :func:`join_strings`: the buffer decoded once and split at the NULs (C speed),
    or cut by the lengths when some string holds a NUL of its own."""
    n = len(lengths)
    if n == 0:
        return []
    text = bytes(buffer).decode(ENCODING, ERRORS)
    if text.count("\0") == n - 1:
        return text.split("\0")
    ends = np.cumsum(lengths + 1).tolist()
    return [text[end - 1 - k:end - 1] for end, k in zip(ends, lengths.tolist())]


def first_unencodable(strings: list[str], joined: str | None = None) -> tuple[bytes, int]:
    """(the strings' UTF-8 with a NUL between them, the first string holding a lone surrogate,
    or -1). Lone surrogates (legal in JSON escapes) cannot be sent or stored as UTF-8."""
    text = "\0".join(strings) if joined is None else joined
    try:
        return text.encode(ENCODING), -1
    except UnicodeEncodeError:
        bad = next(row for row, s in enumerate(strings) if not encodable(s))
        return text.encode(ENCODING, ERRORS), bad


def encodable(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogate): UTF-8 can hold it."""
    try:
        text.encode(ENCODING)
    except UnicodeEncodeError:
        return False
    return True


def pack_strings(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(buffer, lengths)``: a uint8 array of the UTF-8 bytes and int64 char lengths."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    data = "".join(strings).encode(ENCODING, ERRORS)
    return np.frombuffer(data, dtype=np.uint8), lengths


def unpack_strings(buffer: np.ndarray | bytes, lengths: np.ndarray) -> list[str]:
    """Inverse of :func:`pack_strings`."""
    text = bytes(buffer).decode(ENCODING, ERRORS)
    ends = list(accumulate(lengths.tolist()))
    starts = [0] + ends[:-1]
    return [text[a:b] for a, b in zip(starts, ends)]


def pack_string_slices(strings: list[str], bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pack ``strings`` for a scatter over ``bounds``: (buffer, lengths, bytes per part).

    Each part is encoded on its own so its byte count is known for ``Scatterv``.
    """
    parts = [
        "".join(strings[a:b]).encode(ENCODING, ERRORS) for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist())
    ]
    byte_counts = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    return np.frombuffer(b"".join(parts), dtype=np.uint8), lengths, byte_counts


def utf8_lengths(strings: list[str]) -> np.ndarray:
    """Each string's length in UTF-8 bytes (int64), what sizes a message by bytes. ASCII strings
    (``isascii`` is O(1) in CPython) are not encoded."""
    return np.fromiter((len(s) if s.isascii() else len(s.encode(ENCODING, ERRORS)) for s in strings),
                       dtype=np.int64, count=len(strings))


def cut_by_bytes(sizes: np.ndarray, max_bytes: int, max_rows: int | None = None) -> list[int]:
    """Where to cut items of ``sizes`` bytes into consecutive pieces of at most ``max_bytes``
    bytes (and ``max_rows`` items): the pieces' ends, the last ``len(sizes)``. An item larger
    than ``max_bytes`` is a piece of its own."""
    ends, start, total = [], 0, len(sizes)
    cum = np.cumsum(sizes)
    while start < total:
        base = int(cum[start - 1]) if start else 0
        end = int(np.searchsorted(cum, base + max_bytes, side="right"))
        end = max(start + 1, min(end, total if max_rows is None else start + max_rows))
        ends.append(end)
        start = end
    return ends


_ROWS_HEAD = struct.Struct("<QQ")  # rows, whether overrides follow


def pack_rows(rows: RequestRows) -> bytes:
    """One message holding request rows: global index, prompts and (when some row has them)
    their overrides."""
    overrides = rows.overrides if any(rows.overrides) else None
    parts = [_ROWS_HEAD.pack(len(rows), overrides is not None), np.ascontiguousarray(rows.index, np.int64).tobytes()]
    for strings in (rows.prompts, overrides) if overrides is not None else (rows.prompts,):
        buffer, lengths = pack_strings(strings)
        parts += [lengths.tobytes(), struct.pack("<Q", len(buffer)), buffer.tobytes()]
    return b"".join(parts)


def unpack_rows(payload: bytes) -> RequestRows:
    """Inverse of :func:`pack_rows`; overrides are '' when the message had none."""
    k, has_overrides = _ROWS_HEAD.unpack_from(payload)
    at = _ROWS_HEAD.size
    index = np.frombuffer(payload, dtype=np.int64, count=k, offset=at).copy()
    at += 8 * k
    columns = []
    for _ in range(2 if has_overrides else 1):
        lengths = np.frombuffer(payload, dtype=np.int64, count=k, offset=at)
        (nbytes,) = struct.unpack_from("<Q", payload, at + 8 * k)
        at += 8 * k + 8
        columns.append(unpack_strings(payload[at : at + nbytes], lengths))
        at += nbytes
    return RequestRows(index, columns[0], columns[1] if has_overrides else [""] * k)
