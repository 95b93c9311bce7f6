"""How columns of strings cross ranks: one UTF-8 byte buffer plus per-string lengths.

Lengths count characters (not bytes), so the receiver decodes the whole buffer once and
slices the resulting ``str`` — no per-string decode, no pickling. ``surrogatepass``
keeps any string Python can hold round-trippable.
"""
from __future__ import annotations

import struct
from itertools import accumulate

import numpy as np

ENCODING = "utf-8"
ERRORS = "surrogatepass"


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


def pack_rows(index: np.ndarray, prompts: list[str], overrides: list[str] | None) -> bytes:
    """One message holding rows: global index, prompts and (optionally) their overrides."""
    parts = [_ROWS_HEAD.pack(len(index), overrides is not None), np.ascontiguousarray(index, np.int64).tobytes()]
    for strings in (prompts, overrides) if overrides is not None else (prompts,):
        buffer, lengths = pack_strings(strings)
        parts += [lengths.tobytes(), struct.pack("<Q", len(buffer)), buffer.tobytes()]
    return b"".join(parts)


def unpack_rows(payload: bytes) -> tuple[np.ndarray, list[str], list[str]]:
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
    return index, columns[0], columns[1] if has_overrides else [""] * k
