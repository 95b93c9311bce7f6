"""Checkpoints: a run directory beside the output, so a killed job resumes where it stopped.

``OUT.h5.run/`` holds ``manifest.json`` (what the run is: the input's SHA-256, the row count and
a fingerprint of every option that changes answers) and one append-only shard per rank and
attempt, ``rank00003-attempt002.jsonl``. Each finished call appends one JSON line with its
finished rows (answered, or failed for good), written with a single ``write`` so a kill leaves
at most one torn last line, which loading skips. The directory is removed once the final file
is written. No MPI here.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

from .inputs import InputError
from .records import ResultColumns

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
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


def _write_json_atomically(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
    _write_json_atomically(manifest_path, asdict(manifest))
    return path, manifest, resumed


def shard_path(run_dir: str, rank: int, attempt: int) -> str:
    return os.path.join(run_dir, f"rank{rank:05d}-attempt{attempt:03d}.jsonl")


class ShardWriter:
    """Appends finished rows of one rank to its shard, one JSON line per call."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._synced = time.monotonic()

    def append(self, results: ResultColumns, rows) -> None:
        """Record ``rows`` (local positions) of ``results`` that are finished."""
        done = [r for r in rows if results.done[r]]
        if not done:
            return
        n = results.n
        flat = [r * n + j for r in done for j in range(n)]
        record = {
            "index": results.index[done].tolist(),
            "ok": results.ok[done].tolist(),
            "error": [results.error[r] for r in done],
            "completion": [results.completion[k] for k in flat],
            "finish_reason": [results.finish_reason[k] for k in flat],
            "rank": results.rank[done].tolist(),
            "prompt_tokens": results.prompt_tokens[done].tolist(),
            "completion_tokens": results.completion_tokens[done].tolist(),
            "latency_s": results.latency_s[done].tolist(),
        }
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        os.write(self._fd, line.encode("utf-8", "surrogatepass"))  # one write: a kill tears at most this line
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
    columns = {k: [] for k in ("index", "ok", "error", "completion", "finish_reason", "rank", "prompt_tokens",
                               "completion_tokens", "latency_s")}
    for name in sorted(os.listdir(run_dir)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(run_dir, name), "rb") as fh:
            for line in fh:
                try:
                    record = json.loads(line.decode("utf-8", "surrogatepass"))
                except ValueError:  # the torn last line of a killed writer
                    continue
                for key, values in columns.items():
                    values.extend(record[key])
    index = np.asarray(columns["index"], dtype=np.int64)
    keep = np.sort(np.unique(index, return_index=True)[1])
    flat = (keep[:, None] * n + np.arange(n)).ravel().tolist()

    def numeric(name, dtype):
        return np.asarray(columns[name], dtype=dtype)[keep]

    return ResultColumns(
        index=index[keep],
        n=n,
        completion=[columns["completion"][k] for k in flat],
        finish_reason=[columns["finish_reason"][k] for k in flat],
        error=[columns["error"][k] for k in keep.tolist()],
        ok=numeric("ok", bool),
        done=np.ones(len(keep), dtype=bool),
        rank=numeric("rank", np.int32),
        prompt_tokens=numeric("prompt_tokens", np.int64),
        completion_tokens=numeric("completion_tokens", np.int64),
        latency_s=numeric("latency_s", np.float64),
    ).in_index_order()


def remove_run_dir(run_dir: str) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
