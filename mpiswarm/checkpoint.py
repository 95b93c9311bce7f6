"""Checkpoints: a run directory beside the output, so a killed job resumes where it stopped.

``OUT.h5.run/`` holds ``manifest.json`` (what the run is: the input's blocked SHA-256
(:func:`mpiswarm.inputs.blocked_sha256`), the row count and
a fingerprint of every option that changes answers) and one append-only shard per rank and
attempt, ``rank00003-attempt002.shard``. Each finished call appends one record with its finished
rows (answered, or failed for good): a small header, then the columns as raw arrays and the
strings in the wire format of :mod:`mpiswarm.wire` (and, when some row has one, the reasoning
strings after them), with a CRC-32. One ``write`` per record, so a
kill leaves at most one torn last record, which loading skips. The directory is removed once
the final file is written. No MPI here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from .atomic import write_text_atomically
from .inputs import InputError
from .records import ResultColumns
from .wire import pack_strings, unpack_strings

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: input_sha256 is the blocked digest (any number of readers computes it)
FSYNC_EVERY_S = 10.0


def run_dir_for(output: str) -> str:
    return os.path.abspath(output) + ".run"


def fingerprint(options: dict) -> str:
    """A short stable hash of the options that change answers."""
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    input: str
    input_sha256: str
    n_rows: int
    n: int
    fingerprint: str
    options: dict
    attempt: int = 0
    format: int = FORMAT_VERSION


def _mismatch(old: Manifest, new: Manifest) -> str | None:
    if old.format != new.format:
        return f"it was written by another mpiswarm version (format {old.format})"
    if old.input_sha256 != new.input_sha256 or old.n_rows != new.n_rows:
        return f"its input differs ({old.input}, {old.n_rows} rows, sha256 {old.input_sha256[:12]}…)"
    if old.fingerprint != new.fingerprint:
        changed = sorted(k for k in set(old.options) | set(new.options) if old.options.get(k) != new.options.get(k))
        return f"its options differ ({', '.join(changed)})"
    return None


def open_run_dir(output: str, manifest: Manifest, restart: bool) -> tuple[str, Manifest, bool]:
    """Create or reopen the run directory of ``output`` (on the root only).

    Returns ``(path, manifest, resumed)``; ``manifest.attempt`` counts the job's attempts.
    A run directory from a different input or options raises :class:`InputError` unless
    ``restart``, which starts over.
    """
    path = run_dir_for(output)
    manifest_path = os.path.join(path, MANIFEST)
    if restart and os.path.isdir(path):
        shutil.rmtree(path)
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as fh:
                old = Manifest(**json.load(fh))
        except (OSError, ValueError, TypeError) as exc:
            raise InputError(f"{path}: unreadable run directory ({exc}); use --restart to start over") from None
        why = _mismatch(old, manifest)
        if why:
            raise InputError(f"{path}: cannot resume: {why}; use --restart to start over")
        manifest.attempt = old.attempt + 1
        resumed = True
    else:
        os.makedirs(path, exist_ok=True)
        resumed = False
    write_text_atomically(manifest_path, json.dumps(asdict(manifest), indent=1, sort_keys=True), fsync=True)
    return path, manifest, resumed


def shard_path(run_dir: str, rank: int, attempt: int) -> str:
    return os.path.join(run_dir, f"rank{rank:05d}-attempt{attempt:03d}.shard")


_MAGIC = b"MSW1"
_HEAD = struct.Struct("<4sQI")  # magic, payload bytes, CRC-32 of the payload
# (name, dtype) of the numeric columns, in record order; then the string columns
_NUMERIC = (("index", np.int64), ("ok", np.bool_), ("rank", np.int32), ("prompt_tokens", np.int64),
            ("completion_tokens", np.int64), ("latency_s", np.float64))
_STRINGS = ("error", "completion", "finish_reason")


def encode_record(results: ResultColumns, rows: list[int]) -> bytes:
    """The shard record of local ``rows`` of ``results``."""
    n = results.n
    flat = [r * n + j for r in rows for j in range(n)] if n > 1 else rows
    parts = [struct.pack("<QQ", len(rows), n)]
    parts += [np.ascontiguousarray(getattr(results, name)[rows], dtype=dtype).tobytes() for name, dtype in _NUMERIC]
    for name in _STRINGS + (("reasoning",) if results.reasoning is not None else ()):
        column = getattr(results, name)
        buffer, lengths = pack_strings([column[k] for k in (rows if name == "error" else flat)])
        parts += [struct.pack("<Q", len(buffer)), lengths.tobytes(), buffer.tobytes()]
    payload = b"".join(parts)
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> list[dict]:
    """Every whole record in a shard's bytes (a torn or corrupt tail is dropped)."""
    records, pos = [], 0
    while pos + _HEAD.size <= len(data):
        magic, size, crc = _HEAD.unpack_from(data, pos)
        payload = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if magic != _MAGIC or len(payload) != size or zlib.crc32(payload) != crc:
            break
        pos += _HEAD.size + size
        k, n = struct.unpack_from("<QQ", payload)
        at = 16
        record = {"n": n}
        for name, dtype in _NUMERIC:
            width = np.dtype(dtype).itemsize * k
            record[name] = np.frombuffer(payload, dtype=dtype, count=k, offset=at)
            at += width
        for name in _STRINGS + ("reasoning",):
            if name == "reasoning" and at == len(payload):  # written without reasoning
                break
            count = k if name == "error" else k * n
            (nbytes,) = struct.unpack_from("<Q", payload, at)
            lengths = np.frombuffer(payload, dtype=np.int64, count=count, offset=at + 8)
            at += 8 + 8 * count
            record[name] = unpack_strings(payload[at : at + nbytes], lengths)
            at += nbytes
        records.append(record)
    return records


class ShardWriter:
    """Appends finished rows of one rank to its shard, one record per call."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._synced = time.monotonic()

    def append(self, results: ResultColumns, rows) -> None:
        """Record ``rows`` (local positions) of ``results`` that are finished."""
        done = results.done
        finished = [r for r in rows if done[r]]
        if not finished:
            return
        os.write(self._fd, encode_record(results, finished))  # one write: a kill tears at most this record
        if time.monotonic() - self._synced > FSYNC_EVERY_S:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def load_finished(run_dir: str, n: int) -> ResultColumns:
    """Every finished row recorded in the run directory's shards (first record of a row wins)."""
    parts = []
    for name in sorted(os.listdir(run_dir)):
        if name.endswith(".shard"):
            with open(os.path.join(run_dir, name), "rb") as fh:
                parts += decode_records(fh.read())
    if any(p["n"] != n for p in parts):
        raise InputError(f"{run_dir}: checkpoints hold a different n; use --restart to start over")
    everything = ResultColumns.concat([ResultColumns.pending(np.zeros(0, np.int64), n, 0)] + [
        ResultColumns(n=n, done=np.ones(len(p["index"]), bool), **{k: v for k, v in p.items() if k != "n"})
        for p in parts])
    _, first = np.unique(everything.index, return_index=True)
    return everything.take(np.sort(first)).in_index_order()


def remove_run_dir(run_dir: str) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
