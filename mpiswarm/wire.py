"""How columns of strings cross ranks: one UTF-8 byte buffer plus per-string lengths.

Lengths count characters (not bytes), so the receiver decodes the whole buffer once and
slices the resulting ``str`` — no per-string decode, no pickling. ``surrogatepass``
keeps any string Python can hold round-trippable.
"""
from __future__ import annotations

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
