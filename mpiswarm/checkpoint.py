"""Checkpoints: a run directory beside the output, so a killed job resumes where it stopped.

``OUT.h5.run/`` holds ``manifest.json`` (what the run is: the input's blocked SHA-256
(:func:`mpiswarm.inputs.blocked_sha256`), the row count and
a fingerprint of every option that changes answers) and one append-only shard per rank and
attempt, ``rank00003-attempt002.shard``. Each finished call appends one record with its finished
rows (answered, or failed for good): a small header with a CRC-32, then the rows as the gather
sends them (:func:`mpiswarm.packed.pack_message`: every column of :mod:`mpiswarm.schema`, one
binary format for both). One ``write`` per record, so a
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
from .packed import carried, pack_message, unpack_messages

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 2: input_sha256 is the blocked digest; 3: records are gather messages (every column)
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


_MAGIC = b"MSW2"
_HEAD = struct.Struct("<4sQI")  # magic, payload bytes, CRC-32 of the payload


def encode_record(results: ResultColumns, rows: list[int]) -> bytes:
    """The shard record of local ``rows`` of ``results``: the gather's own message
    (:func:`mpiswarm.packed.pack_message`, every column of the schema) behind a CRC'd header."""
    payload = pack_message(results.take(np.asarray(rows, dtype=np.int64)), optional=carried(results))
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> list[ResultColumns]:
    """Every whole record in a shard's bytes (a torn or corrupt tail is dropped)."""
    records, pos = [], 0
    while pos + _HEAD.size <= len(data):
        magic, size, crc = _HEAD.unpack_from(data, pos)
        payload = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if magic != _MAGIC or len(payload) != size or zlib.crc32(payload) != crc:
            break
        pos += _HEAD.size + size
        records.append(unpack_messages(np.frombuffer(payload, np.uint8), [0]).to_results())
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
    if any(p.n != n for p in parts):
        raise InputError(f"{run_dir}: checkpoints hold a different n; use --restart to start over")
    everything = ResultColumns.concat([ResultColumns.pending(np.zeros(0, np.int64), n, 0)] + parts)
    _, first = np.unique(everything.index, return_index=True)
    return everything.take(np.sort(first)).in_index_order()


def remove_run_dir(run_dir: str) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
