"""The pipeline's input stage run by every rank: a parallel reader of the prompt file.

Every rank opens the file and reads one byte range of it (the even share of its bytes, both
ends moved to just after a newline: :func:`~mpiswarm.inputs.split_point`), parses it with
:func:`~mpiswarm.inputs.parse_range` — line numbers are the file's (an exclusive prefix sum of
the ranges' newline counts) — and digests the 16 MiB blocks that begin in it. Rank 0 receives
every range's columns in one ``Igatherv`` (in rounds of at most 1 GiB: MPI counts are C ints; each string column as UTF-8 bytes with a NUL
between the strings, plus their character lengths; the rare ``fields`` of plain rows and the
range's first error pickled), decodes each column once and splits it, and merges the ranges with
:func:`~mpiswarm.inputs.merge_parts` — the same code, the same checks (duplicate ``custom_id``
over all ranges, default ids that repeat an explicit one) and so the same first error, with
the same message, as the serial :func:`~mpiswarm.inputs.read_prompts`. Every rank raises that
error; rank 0 alone gets the :class:`~mpiswarm.inputs.PromptSet`.

Besides its range a rank reads the few bytes before it up to the previous newline (to find
where its range starts) and, if the last digest block that begins in its range runs past it,
the rest of that block (at most 16 MiB).

Below :data:`PARALLEL_READ_MIN_BYTES` (or the ``MPISWARM_PARALLEL_READ_MIN_BYTES`` environment
variable, read here only) rank 0 reads the file alone.
"""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np

from . import _mpi
from .inputs import (InputError, Part, PromptSet, _filler, block_digests, cannot_open, check_prompt_options,
                     combine_digests, file_reader, input_suffix, merge_parts, parse_range, read_prompts,
                     split_point)
from .codec import join_strings, split_strings

#: Files smaller than this many bytes (one digest block: ~160,000 rows of 100 bytes, 0.4 s for
#: rank 0 alone) are read by rank 0 alone; the environment variable :data:`MIN_BYTES_ENV`
#: overrides it. (Measured at 2 ranks: parallel is faster from ~1 MB on.)
PARALLEL_READ_MIN_BYTES = 16 << 20
MIN_BYTES_ENV = "MPISWARM_PARALLEL_READ_MIN_BYTES"

# rows, explicit ids, whether overrides follow, prompt bytes, override bytes, id bytes, pickled bytes
_HEAD = struct.Struct("<7Q")


def parallel_read_min_bytes() -> int:
    """The file size from which every rank reads a part: ``MPISWARM_PARALLEL_READ_MIN_BYTES``
    if set (an integer, ``0`` always reads in parallel), else :data:`PARALLEL_READ_MIN_BYTES`."""
    value = os.environ.get(MIN_BYTES_ENV, "").strip()
    if not value:
        return PARALLEL_READ_MIN_BYTES
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{MIN_BYTES_ENV}: must be a number of bytes, got {value!r}") from None


def _raise_agreed(error: str | None, comm) -> None:
    """Every rank raises rank 0's ``error`` (if any). The others sleep while rank 0 works."""
    _mpi.barrier_sleeping(comm)
    error = _mpi.bcast(error, comm)
    if error:
        raise InputError(error)


def read_prompts_parallel(path: str | os.PathLike, comm=None, *, template: str | None = None,
                          prompt_format: str | None = None, min_bytes: int | None = None) -> PromptSet | None:
    """:func:`~mpiswarm.inputs.read_prompts` as a collective: every rank of ``comm`` parses a part
    of the file. Returns the :class:`PromptSet` on rank 0 and None elsewhere; raises the same
    :class:`InputError` on every rank for bad input (the serial reader's message). Files below
    ``min_bytes`` (default :func:`parallel_read_min_bytes`), or one rank, are read by rank 0 alone.
    """
    rank, size = _mpi.rank_and_size(comm)
    path = os.fspath(path)
    decision = None
    if rank == _mpi.ROOT:
        try:
            check_prompt_options(template, prompt_format)
            suffix = input_suffix(path)
            try:
                nbytes = os.stat(path).st_size
            except OSError as exc:
                raise cannot_open(path, exc) from None
            threshold = parallel_read_min_bytes() if min_bytes is None else min_bytes
            decision = (None, suffix, nbytes, size > 1 and nbytes >= threshold)
        except InputError as exc:
            decision = (str(exc), None, 0, False)
    error, suffix, nbytes, parallel = _mpi.bcast(decision, comm)
    if error:
        raise InputError(error)
    if parallel:
        prompt_set, parallel = _read_collectively(path, suffix, nbytes, template, prompt_format, comm)
        if parallel:
            return prompt_set
    prompt_set = error = None
    if rank == _mpi.ROOT:
        try:
            prompt_set = read_prompts(path, template=template, prompt_format=prompt_format)
        except InputError as exc:
            error = str(exc)
    _raise_agreed(error, comm)
    return prompt_set


def _read_collectively(path, suffix, nbytes, template, prompt_format, comm) -> tuple[PromptSet | None, bool]:
    """``(prompt set on rank 0, True)``; ``(None, False)`` on every rank if some rank cannot open
    the file (not on a file system that every node sees): then rank 0 reads it alone."""
    rank, size = _mpi.rank_and_size(comm)
    fd = start = None
    try:
        fd = os.open(path, os.O_RDONLY)
        read_at = file_reader(fd)
        start = split_point(read_at, nbytes, size, rank)
    except OSError:
        pass
    try:
        starts = _mpi.allgather(start, comm)
        if None in starts:
            return None, False
        end = starts[rank + 1] if rank + 1 < size else nbytes
        try:
            data = read_at(start, end - start)
            if len(data) != end - start:
                raise OSError(0, f"{path} changed while it was read")
            failed = None
        except OSError as exc:
            data, failed = b"", (0, str(cannot_open(path, exc)))
        first_lineno = 1 + _mpi.exscan_sum(data.count(b"\n"), comm)
        part = parse_range(path, data, first_lineno, suffix, _filler(template), prompt_format=prompt_format,
                           offset=start)
        if failed:
            part.error = failed
        digests = block_digests(data, start, end, nbytes, read_at) if not failed else []
    finally:
        if fd is not None:
            os.close(fd)
    del data
    root = rank == _mpi.ROOT
    messages = _mpi.gather_bytes_in_rounds(b"" if root else pack_part(part, digests), comm)
    prompt_set = error = None
    if root:
        parts, all_digests = [part], [digests]
        for r in range(1, size):
            other, theirs = unpack_part(messages[r])
            messages[r] = None
            parts.append(other)
            all_digests.append(theirs)
        try:
            prompt_set = merge_parts(path, parts)
            prompt_set.sha256 = combine_digests([d for ds in all_digests for d in ds], nbytes)
        except InputError as exc:
            error = str(exc)
    _raise_agreed(error, comm)
    return prompt_set, True


def pack_part(part: Part, digests: list[bytes]) -> bytes:
    """One range's columns as one message (what rank 0 receives): rows' prompts and overrides,
    the explicit ids with their rows and lines; the first error, the block digests and
    ``fields`` pickled. A range with an error sends its ids only (for the duplicate check)."""
    ok = part.error is None
    n_rows = len(part.prompts) if ok else 0
    prompt_lengths = np.fromiter(map(len, part.prompts), np.int64, n_rows) if ok else np.zeros(0, np.int64)
    has_overrides = ok and any(part.overrides)
    over_buffer, over_lengths = join_strings(part.overrides) if has_overrides else (b"", np.zeros(0, np.int64))
    id_buffer, id_lengths = join_strings(part.ids)
    meta = pickle.dumps((part.error, part.bad_unicode, digests, part.fields if ok else None, part.unused),
                        protocol=pickle.HIGHEST_PROTOCOL)
    encoded = part.encoded if ok else b""  # already packed as _pack_column does: NUL-separated
    head = _HEAD.pack(n_rows, len(part.ids), has_overrides, len(encoded), len(over_buffer), len(id_buffer),
                      len(meta))
    arrays = [prompt_lengths, over_lengths, np.asarray(part.id_rows, np.int64), np.asarray(part.id_lines, np.int64),
              id_lengths]
    return b"".join([head, *(a.tobytes() for a in arrays), encoded, over_buffer, id_buffer, meta])


def unpack_part(message) -> tuple[Part, list[bytes]]:
    """Inverse of :func:`pack_part`: ``(part, digests)``; each string column is decoded once
    and split."""
    message = memoryview(message)
    n_rows, n_ids, has_overrides, prompt_bytes, over_bytes, id_bytes, meta_bytes = _HEAD.unpack_from(message)
    at = _HEAD.size
    arrays = []
    for count in (n_rows, n_rows if has_overrides else 0, n_ids, n_ids, n_ids):
        arrays.append(np.frombuffer(message, np.int64, count, at))
        at += 8 * count
    prompt_lengths, over_lengths, id_rows, id_lines, id_lengths = arrays
    columns = []
    for nbytes, lengths in ((prompt_bytes, prompt_lengths), (over_bytes, over_lengths), (id_bytes, id_lengths)):
        columns.append(split_strings(message[at:at + nbytes], lengths))
        at += nbytes
    prompts, overrides, ids = columns
    error, bad_unicode, digests, fields, unused = pickle.loads(message[at:at + meta_bytes])
    part = Part(prompts, overrides if has_overrides else [""] * n_rows, id_rows, ids, id_lines, fields, error,
                bad_unicode, unused=unused)
    return part, digests
