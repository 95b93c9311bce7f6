#!/usr/bin/env python3
"""The scale model: what rank 0 costs at 1,000 and 10,000 ranks with 1M and 100M prompts.

Rank 0 does everything that does not parallelize: it reads the input, scatters the first share,
serves the control plane's chunk requests during the request phase, and at the end receives,
parses and writes every row. This script measures each of those per row, per message or per
request on this machine, with mpiswarm's own functions, then projects them:

* in process (no MPI): ``read_prompts`` per row; the scatter's packing per row; one chunk
  request served by rank 0 (``Control._hand_out`` + ``pack_rows``) at 1,000 and 10,000 ranks;
  ``pack_message`` per row (every rank, in parallel: rank 0 packs only its own share);
  ``unpack_messages`` per message and per row; ``ResultWriter.write_rows`` per row (1 KB answers);
* under ``mpiexec -n R`` for R = 1, 2, 4, 8: one empty gather round (``gather_packed`` of 0
  rows: the collectives alone) and the byte rate of one large ``Igatherv``; at 2 ranks also one
  small message received. A round costs rank 0 a + b·R (a: a round at 2 ranks; b: one more
  message received and parsed); its prediction is checked against the rounds at 4 and 8 ranks
  (which here share 2 cores, so they read high).

``python tools/scale_model.py`` prints the constants and the projection as JSON; ``tools/bench.py
--only model`` puts them in docs/bench.md.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext

#: the checkout this package lives in; children import this package from it
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWER_BYTES = 1000
ROUND_ROWS = 1 << 18  # layout.GATHER_ROWS_PER_ROUND
CALL_ROWS = 48  # rows of one call with the defaults (call_cap(256, 8)): what a chunk request brings
LIMIT = CALL_ROWS * 9  # rows a rank may hold unfinished with the defaults: its first share
AURORA_PPN = 12  # ranks a node on Aurora (one a GPU tile): --parts-per node writes a part a node


def _best(f, repeat=3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def _results(k: int, rank: int = 0, index=None):
    import numpy as np

    from mpiswarm.records import ResultColumns

    res = ResultColumns.pending(np.arange(k, dtype=np.int64) if index is None else index, 1, rank)
    text = ("Gène café naïve résumé " * (ANSWER_BYTES // 20 + 2))[:ANSWER_BYTES - 10]
    res.completion = [f"{text}{i:09d}" for i in res.index.tolist()]
    res.finish_reason = ["stop"] * k
    res.error = [""] * k
    res.ok[:] = True
    res.done[:] = True
    return res


def measure_in_process(work: str) -> dict:
    """Per-row, per-message and per-request constants of rank 0's code, in this process."""
    import numpy as np

    from mpiswarm.control import Control, RowPool
    from mpiswarm.inputs import read_prompts
    from mpiswarm.packed import PackedColumns, pack_message, unpack_messages
    from mpiswarm.partition import contiguous_bounds
    from mpiswarm.store import create_result_file
    from mpiswarm.codec import pack_rows, pack_string_slices

    from . import scaling_study

    c = {}
    n = 200_000
    path = os.path.join(work, "model.jsonl")
    scaling_study.write_prompts(path, n)
    c["read_us_per_row"] = _best(lambda: read_prompts(path), 2) / n * 1e6
    ps = read_prompts(path)
    c["prompt_bytes"] = sum(len(p.encode()) for p in ps.prompts[:10000]) / 10000
    bounds = contiguous_bounds(n, 1000)
    c["scatter_pack_us_per_row"] = _best(lambda: pack_string_slices(ps.prompts, bounds)) / n * 1e6

    class _Quiet:  # a mailbox that sends nothing: rank 0's own cost of a request
        def send(self, *args):
            pass

    c["request_us"] = {}
    for ranks in (1000, 10000):
        todo = np.arange(n, dtype=np.int64)
        control = Control(_Quiet(), 0, ranks, 1)
        control.pool = RowPool(ps, todo, ranks, minimum=8, limit=CALL_ROWS)
        served = 0
        t0 = time.perf_counter()
        while control.pool.remaining and served < 2000:
            rank = served % ranks
            got = control._hand_out(rank)
            pack_rows(got)
            control.counts[rank, 0] = control.pool.handed[rank]  # as if it finished them
            served += 1
        c["request_us"][ranks] = (time.perf_counter() - t0) / served * 1e6
    k = 50_000
    res = _results(k)
    c["pack_us_per_row"] = _best(lambda: pack_message(res)) / k * 1e6
    message = np.frombuffer(pack_message(res), np.uint8)
    c["unpack_us_per_row"] = _best(lambda: unpack_messages(message, [0]).in_index_order()) / k * 1e6
    small = pack_message(_results(26))
    many = np.frombuffer(small * 10000, np.uint8)
    offsets = np.arange(10000) * len(small)
    c["unpack_us_per_message"] = max(0.0, _best(lambda: unpack_messages(many, offsets)) / 10000 * 1e6
                                     - 26 * c["unpack_us_per_row"])
    packed = PackedColumns.from_results(res)
    prompts = ps.prompts[:k]
    ids = ps.custom_ids[:k]

    def write():
        with create_result_file(os.path.join(work, "model.h5"), k, 1) as out:
            out.write_rows(prompts, ids, packed)

    c["write_us_per_row"] = _best(write) / k * 1e6
    os.unlink(os.path.join(work, "model.h5"))
    c.update(measure_virtual_in_process(work, ps, packed))
    return c


def measure_virtual_in_process(work: str, ps, packed) -> dict:
    """Rank 0's constants of the virtual layout and of the parallel reader, in this process:
    encoding a row's prompt and custom_id for its block's rank, writing a row to a part file
    (every rank, in parallel), the Python of one round per destination rank, one part mapped
    by the output's virtual datasets; the parallel reader's merge on rank 0 per row."""
    import numpy as np

    from mpiswarm import _mpi
    from mpiswarm.gather import block_messages
    from mpiswarm.inputs import line_aligned_ranges, merge_parts, parse_range
    from mpiswarm.packed import PackedStrings
    from mpiswarm.read import pack_part, unpack_part
    from mpiswarm.store import create_part_file, create_virtual_file

    c = {}
    k = len(packed)
    prompts, ids = ps.prompts[:k], ps.custom_ids[:k]
    c["text_bytes"] = sum(len(p.encode()) + len(i.encode()) for p, i in zip(prompts[:10000], ids[:10000])) / 10000
    c["texts_us_per_row"] = _best(lambda: (PackedStrings.pack(prompts), PackedStrings.pack(ids))) / k * 1e6
    texts = PackedStrings.pack(prompts), PackedStrings.pack(ids)
    path = os.path.join(work, "part.h5")

    def part():
        with create_part_file(path, 0, k, 1) as out:
            out.write_rows(*texts, packed)

    c["part_write_us_per_row"] = _best(part) / k * 1e6
    os.unlink(path)
    ranks = 10_000  # one round's Python per destination: messages, their sizes, the root's windows
    empty = _results(0)
    lo = np.arange(ranks, dtype=np.int64)
    hi = lo + 1

    def one_round():
        sends = [_mpi._as_bytes(m) for m in block_messages(empty, lo, hi, False)]
        np.fromiter(map(len, sends), np.int64, len(sends))
        np.concatenate(sends)
        windows = [[prompts[a:b], ids[a:b]] for a, b in zip(lo.tolist(), hi.tolist()) if b > a]
        [[x for w in windows for x in w[j]] for j in range(2)]

    c["round_us_per_destination"] = _best(one_round) / ranks * 1e6
    n_parts = 1000
    parts = [(f"p/{r}.h5", r * 100, 100) for r in range(n_parts)]

    def vds():
        with create_virtual_file(os.path.join(work, "vds.h5"), n_parts * 100, 1, parts):
            pass

    c["vds_us_per_part"] = _best(vds) / n_parts * 1e6
    os.unlink(os.path.join(work, "vds.h5"))
    raw = open(ps.path, "rb").read()
    n = len(ps)
    pieces, lineno = [], 1
    for a, b in line_aligned_ranges(raw, 64):  # rank 0's part of a 64-rank read: unpack the others, merge
        pieces.append(parse_range(ps.path, raw[a:b], lineno, offset=a))
        lineno += raw.count(b"\n", a, b)
    messages = [np.frombuffer(pack_part(p, []), np.uint8) for p in pieces[1:]]
    c["read_merge_us_per_row"] = _best(
        lambda: merge_parts(ps.path, pieces[:1] + [unpack_part(m)[0] for m in messages])) / n * 1e6
    return c


def rounds_child(argv) -> int:
    """Under ``mpiexec -n R``: ``scale_model.py _rounds ROUNDS MB`` — empty gather rounds, then
    one large ``Igatherv``; prints one JSON line on rank 0."""
    import numpy as np
    from mpi4py import MPI

    from mpiswarm import _mpi
    from mpiswarm.gather import gather_packed

    rounds, mb = int(argv[0]), float(argv[1])
    comm = MPI.COMM_WORLD
    empty = _results(0, comm.Get_rank())
    gather_packed(empty, comm)
    _mpi.barrier_sleeping(comm)
    t0 = MPI.Wtime()
    for _ in range(rounds):
        gather_packed(empty, comm)
    per_round = (MPI.Wtime() - t0) / rounds
    payload = np.ones(int(mb * 2**20) if comm.Get_rank() else 0, np.uint8)
    _mpi.gatherv_bytes(payload, comm)
    _mpi.barrier_sleeping(comm)
    t0 = MPI.Wtime()
    buffer, _ = _mpi.gatherv_bytes(payload, comm)
    dt = MPI.Wtime() - t0
    msg_s = None
    if comm.Get_size() == 2:  # what one more rank costs the root in a linear gather: one more receive
        k = 5000
        _mpi.barrier_sleeping(comm)
        t0 = MPI.Wtime()
        small = np.zeros(1, np.int64)
        for _ in range(k):
            if comm.Get_rank() == 0:
                comm.Recv(small, source=1, tag=5)
            else:
                comm.Send(small, dest=0, tag=5)
        msg_s = (MPI.Wtime() - t0) / k
    if comm.Get_rank() == 0:
        rate = len(buffer) / dt if len(buffer) else None
        print("ROUNDS " + json.dumps({"ranks": comm.Get_size(), "round_s": per_round, "bytes_per_s": rate,
                                      "message_s": msg_s}), flush=True)
    return 0


def layout_child(argv) -> int:
    """Under ``mpiexec -n R``: ``scale_model.py _layout ROWS`` — rank 0's seconds for the rows
    after the requests, both layouts, with ROWS rows of 1 KB answers dealt to the ranks in calls
    of CALL_ROWS (as the dynamic schedule leaves them): the single layout (``gather_in_rounds`` +
    rank 0 writing) and the virtual one (``layout.write_parts`` + the output over the parts), best
    of 2; and one virtual round of one row a rank (the collectives alone). One JSON line."""
    import numpy as np
    from mpi4py import MPI

    from mpiswarm import _mpi
    from mpiswarm.gather import gather_in_rounds, redistribute_in_rounds
    from mpiswarm.partition import contiguous_bounds
    from mpiswarm.layout import write_parts
    from mpiswarm.store import create_result_file, create_virtual_file, remove_stale_parts

    n = int(argv[0])
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    calls = np.arange(n, dtype=np.int64).reshape(-1, CALL_ROWS) if n % CALL_ROWS == 0 else None
    index = calls[rank::size].ravel() if calls is not None else np.arange(rank, n, size, dtype=np.int64)
    local = _results(len(index), rank, index)
    prompts = [f"Question {i}: what does the gene G{i % 997} do in the cell?" for i in range(n)] if rank == 0 else None
    ids = [f"q{i:07d}" for i in range(n)] if rank == 0 else None
    work = _mpi.bcast(tempfile.mkdtemp(prefix="mpiswarm-layout-") if rank == 0 else None, comm)
    out = {"ranks": size, "rows": n, "single_s": math.inf, "virtual_s": math.inf}
    for _ in range(2):
        _mpi.barrier_sleeping(comm)
        t0 = MPI.Wtime()
        with create_result_file(os.path.join(work, "single.h5"), n, 1) if rank == 0 else nullcontext() as f:
            for part in gather_in_rounds(local, ROUND_ROWS, comm):
                f.write_rows(prompts, ids, part)
        out["single_s"] = min(out["single_s"], MPI.Wtime() - t0)
        _mpi.barrier_sleeping(comm)
        t0 = MPI.Wtime()
        target = os.path.join(work, "virtual.h5")
        tally, _, parts, reasoning = write_parts(target, n, 1, local, prompts, ids, comm)
        if rank == 0:
            with create_virtual_file(target, n, 1, parts, reasoning) as f:
                f.n_ok = tally.ok
            out["virtual_s"] = min(out["virtual_s"], MPI.Wtime() - t0)
            remove_stale_parts(target, keep=[])
    _mpi.barrier_sleeping(comm)
    rounds = 100
    tiny = _results(1, rank, np.array([rank], np.int64))
    bounds = contiguous_bounds(size, size)
    texts = (lambda a, b: [prompts[a:b], ids[a:b]]) if rank == 0 else None  # noqa: E731
    t0 = MPI.Wtime()
    for _ in range(rounds):
        for _block in redistribute_in_rounds(tiny, bounds, size, texts, 2, comm):
            pass
    out["virtual_round_s"] = (MPI.Wtime() - t0) / rounds
    if rank == 0:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        print("LAYOUT " + json.dumps(out), flush=True)
    return 0


def _child_runs(tag: str, args: list, ranks, timeout: float) -> list[dict]:
    """This script under ``mpiexec -n R ARGS`` for each R of ``ranks``: its ``TAG {json}`` lines."""
    from mpiswarm.launch import find_mpiexec

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = []
    for r in ranks:
        proc = subprocess.run([find_mpiexec(), "-n", str(r), sys.executable, "-m", __spec__.name, *args],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"scale model {args[0]} at {r} ranks: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith(tag + " "))
        out.append(json.loads(line.split(" ", 1)[1]))
    return out


def measure_layouts(rows: int, ranks=(1, 2, 4, 8), timeout: float = 600.0) -> list[dict]:
    return _child_runs("LAYOUT", ["_layout", str(rows)], ranks, timeout)


def measure_rounds(ranks=(1, 2, 4, 8), timeout: float = 300.0) -> list[dict]:
    return _child_runs("ROUNDS", ["_rounds", "200", "64"], ranks, timeout)


def fit_rounds(rounds: list[dict], c: dict) -> dict:
    """A round costs rank 0 ``a + b·R``: ``a`` is a round at 2 ranks (each with a core: the
    latency of two collectives and the waiting ranks' sleeps), ``b`` one more message received
    (measured point to point at 2 ranks: a linear gather receives one a rank) plus parsing it."""
    two = next(r for r in rounds if r["ranks"] == 2)
    return {"a_s": two["round_s"], "b_s_per_rank": two["message_s"] + c["unpack_us_per_message"] * 1e-6}


def fit_virtual(layouts: list[dict], c: dict, fit: dict) -> dict:
    """A virtual round costs rank 0 ``a + b·R``: ``a`` is a round of one row a rank at 2 ranks
    (an ``Ialltoall`` of the sizes, the messages point to point, the texts' scatters), ``b`` one more destination: its
    Python in the round and one more message (as in the single layout's ``b``)."""
    two = next(r for r in layouts if r["ranks"] == 2)
    return {"a_s": two["virtual_round_s"],
            "b_s_per_rank": c["round_us_per_destination"] * 1e-6 + fit["b_s_per_rank"]}


def _after_requests(c: dict, fit: dict, vfit: dict, bytes_per_s: float, ranks: int, prompts: int,
                    share: float = 1.0, ppn: int = 1) -> dict:
    """Rank 0's seconds after the requests, both layouts. ``share``: how many ranks share one
    rank's core (1 on a machine with a core a rank; R/2 here, at R ranks on 2 cores) — the
    parallel terms take that much longer. ``ppn``: ranks a part file (1: a part a rank; 12:
    ``--parts-per node`` on Aurora's 12 tiles a node, the node's first rank writing them all)."""
    from mpiswarm.layout import VIRTUAL_TEXT_ROWS_PER_ROUND

    rounds = -(-prompts // ROUND_ROWS)
    row_bytes = ANSWER_BYTES + 40
    own = prompts / ranks * share  # rows rank 0 packs itself
    gather = (rounds * (fit["a_s"] + fit["b_s_per_rank"] * ranks)
              + prompts * (c["unpack_us_per_row"] * 1e-6 + row_bytes / bytes_per_s) + own * c["pack_us_per_row"] * 1e-6)
    writers = max(1, ranks // ppn)
    block = -(-prompts // writers)  # rows of rank 0's part
    window = max(1, min(ROUND_ROWS, VIRTUAL_TEXT_ROWS_PER_ROUND // writers))
    v_rounds = -(-block // window)
    v_gather = (v_rounds * (vfit["a_s"] + vfit["b_s_per_rank"] * ranks)
                + prompts * (c["texts_us_per_row"] * 1e-6 + c["text_bytes"] / bytes_per_s)
                + own * c["pack_us_per_row"] * 1e-6
                + block * share * (c["unpack_us_per_row"] * 1e-6 + row_bytes / bytes_per_s))
    v_write = block * share * c["part_write_us_per_row"] * 1e-6 + writers * c["vds_us_per_part"] * 1e-6
    return {"rounds": rounds, "gather_s": gather, "write_s": prompts * c["write_us_per_row"] * 1e-6,
            "after_requests_s": gather + prompts * c["write_us_per_row"] * 1e-6, "virtual_rounds": v_rounds,
            "virtual_gather_s": v_gather, "virtual_write_s": v_write, "virtual_after_requests_s": v_gather + v_write}


def project(c: dict, fit: dict, vfit: dict, bytes_per_s: float, ranks: int, prompts: int) -> dict:
    """Rank 0's seconds for one job, phase by phase (answers of ANSWER_BYTES): the read serial
    and parallel, the scatter, the control plane, and after the requests both layouts."""
    req_us = c["request_us"][str(ranks)] if str(ranks) in c["request_us"] else c["request_us"][ranks]
    first = min(prompts, ranks * max(LIMIT, -(-prompts // (8 * ranks))))  # the first share, scattered
    requests = -(-(prompts - first) // CALL_ROWS)  # chunk requests served during the request phase
    p = {
        "read_s": prompts * c["read_us_per_row"] * 1e-6,
        "parallel_read_s": (prompts / ranks * c["read_us_per_row"] + prompts * c["read_merge_us_per_row"]) * 1e-6
        + prompts * c["prompt_bytes"] / bytes_per_s,
        "scatter_s": first * c["scatter_pack_us_per_row"] * 1e-6 + first * c["prompt_bytes"] / bytes_per_s,
        "control_requests": requests,
        "control_s": requests * req_us * 1e-6,
        **_after_requests(c, fit, vfit, bytes_per_s, ranks, prompts),
    }
    p["node_parts_after_requests_s"] = _after_requests(c, fit, vfit, bytes_per_s, ranks, prompts,
                                                       ppn=AURORA_PPN)["virtual_after_requests_s"]
    return p


#: rows of the layouts' check at 1-8 ranks (a multiple of CALL_ROWS: whole calls dealt to the ranks)
CHECK_ROWS = 384_000


def model(work: str, timeout: float = 300.0, check_rows: int = CHECK_ROWS) -> dict:
    constants = measure_in_process(work)
    rounds = measure_rounds(timeout=timeout)
    fit = fit_rounds(rounds, constants)
    rates = [r["bytes_per_s"] for r in rounds if r["bytes_per_s"]]
    bytes_per_s = min(rates)
    for r in rounds:  # the model's own prediction at the measured rank counts (1 rank: no one to wait for)
        r["predicted_s"] = fit["a_s"] + fit["b_s_per_rank"] * (r["ranks"] - 2) if r["ranks"] > 1 else None
    layouts = measure_layouts(check_rows, timeout=2 * timeout)
    vfit = fit_virtual(layouts, constants, fit)
    cores = os.cpu_count() or 1
    for r in layouts:  # both layouts against the model, with a core a rank and as the ranks share cores here
        for share, key in ((1.0, "model"), (max(1.0, r["ranks"] / cores), "model_shared")):
            m = _after_requests(constants, fit, vfit, bytes_per_s, r["ranks"], check_rows, share)
            r[f"{key}_single_s"] = m["after_requests_s"]
            r[f"{key}_virtual_s"] = m["virtual_after_requests_s"]
    table = [{"ranks": r, "prompts": n, **project(constants, fit, vfit, bytes_per_s, r, n)}
             for r in (1000, 10000) for n in (1_000_000, 100_000_000)]
    return {"constants": constants, "rounds": rounds, "fit": fit, "virtual_fit": vfit, "layouts": layouts,
            "check_rows": check_rows, "cores": cores, "bytes_per_s": bytes_per_s, "table": table,
            "answer_bytes": ANSWER_BYTES, "round_rows": ROUND_ROWS, "call_rows": CALL_ROWS, "first_share": LIMIT}


def measure_parallel_read(rows: int = 400_000, ranks=(1, 2, 4), work: str | None = None, timeout: float = 300.0,
                          child: str | None = None) -> dict:
    """Rank 0's read of a ``rows``-row JSONL, serial (``read_prompts``) and with every rank
    reading a part (``read_prompts_parallel``, forced), under ``mpiexec -n R`` for each of
    ``ranks``: rank 0's seconds and µs/row (best of 3), and in this process what rank 0 alone
    does in the parallel reader at any rank count — unpack the other ranks' parts and merge
    them (the duplicate check included) — per row. ``scale_model.py read [ROWS]`` prints it as
    JSON. (``child``: the file, when this runs as one rank of the job.)"""
    import numpy as np

    from mpiswarm.inputs import line_aligned_ranges, merge_parts, parse_range, read_prompts
    from mpiswarm.read import pack_part, read_prompts_parallel, unpack_part

    if child is not None:
        from mpi4py import MPI

        from mpiswarm import _mpi

        comm = MPI.COMM_WORLD
        out = {"ranks": comm.Get_size()}
        for name, read in (("parallel", lambda: read_prompts_parallel(child, comm, min_bytes=0)),
                           ("serial", lambda: read_prompts_parallel(child, comm, min_bytes=1 << 62))):
            best = math.inf
            for _ in range(3):
                _mpi.barrier_sleeping(comm)
                t0 = time.perf_counter()
                ps = read()
                best = min(best, time.perf_counter() - t0)
            out[f"{name}_s"] = best
            if ps is not None:
                out[f"{name}_rows"] = len(ps)
        if comm.Get_rank() == 0:
            print("READ " + json.dumps(out), flush=True)
        return out

    from mpiswarm.launch import find_mpiexec

    from . import scaling_study

    with tempfile.TemporaryDirectory(prefix="mpiswarm-read-", dir=work) as tmp:
        path = os.path.join(tmp, "read.jsonl")
        scaling_study.write_prompts(path, rows)
        data = open(path, "rb").read()
        result = {"rows": rows, "bytes": len(data), "runs": []}
        for k in (4, 64):  # rank 0's own share of the work, whatever the rank count
            parts, lineno = [], 1
            for a, b in line_aligned_ranges(data, k):
                parts.append(parse_range(path, data[a:b], lineno, offset=a))
                lineno += data.count(b"\n", a, b)
            messages = [np.frombuffer(pack_part(p, []), np.uint8) for p in parts[1:]]
            merge_s = _best(lambda: merge_parts(path, parts[:1] + [unpack_part(m)[0] for m in messages]))
            result[f"merge_us_per_row_{k}_parts"] = merge_s / rows * 1e6
        result["serial_in_process_us_per_row"] = _best(lambda: read_prompts(path), 2) / rows * 1e6
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        for r in ranks:
            proc = subprocess.run([find_mpiexec(), "-n", str(r), sys.executable, "-m", __spec__.name, "_read",
                                   path], env=env, capture_output=True, text=True, timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"parallel read at {r} ranks: exit {proc.returncode}\n{proc.stderr[-2000:]}")
            run = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("READ ")).split(" ", 1)[1])
            for name in ("serial", "parallel"):
                run[f"{name}_us_per_row"] = run[f"{name}_s"] / rows * 1e6
            result["runs"].append(run)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_rounds":
        return rounds_child(argv[1:])
    if argv and argv[0] == "_layout":
        return layout_child(argv[1:])
    if argv and argv[0] == "_read":
        return measure_parallel_read(child=argv[1]) and 0
    if argv and argv[0] == "read":
        print(json.dumps(measure_parallel_read(int(argv[1]) if len(argv) > 1 else 400_000), indent=1))
        return 0
    with tempfile.TemporaryDirectory(prefix="mpiswarm-model-") as work:
        print(json.dumps(model(work), indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
