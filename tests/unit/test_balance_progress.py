"""Chunk and call sizing, the row queue, and progress formatting (tier 1: no MPI)."""
import io

import numpy as np

from mpiswarm.balance import Chunk, RowQueue, call_cap, guided_size, next_call_size
from mpiswarm.progress import ProgressPrinter, format_bar, format_duration, progress_figures
from mpiswarm.codec import pack_rows, unpack_rows
from mpiswarm.rows import RequestRows


def test_guided_chunks_shrink_and_cover_everything():
    remaining, sizes = 10_000, []
    while remaining:
        sizes.append(guided_size(remaining, 4, minimum=8))
        remaining -= sizes[-1]
    assert sum(sizes) == 10_000 and sizes[0] == 1250
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] <= 8
    assert guided_size(0, 4) == 0 and guided_size(3, 4, minimum=8) == 3


def test_call_sizes():
    assert call_cap(256, 16) == 24 and call_cap(1, 64) == 1  # 1.5 x max_num_seqs in flight
    assert next_call_size(1000, batch_size=None, concurrency=4, cap=None, final=True) == 1000  # static: one call
    assert next_call_size(1000, batch_size=7, concurrency=4, cap=32, final=False) == 7
    assert next_call_size(1000, batch_size=None, concurrency=4, cap=32, final=False) == 32
    assert next_call_size(40, batch_size=None, concurrency=4, cap=32, final=True) == 10  # the tail, shared
    assert next_call_size(12, batch_size=None, concurrency=4, cap=32, final=True) == 8  # but not below cap // 4


def test_row_queue_keeps_override_groups_apart():
    q = RowQueue()
    a = Chunk.new(np.arange(5), list("abcde"), ["", "x", "", "x", ""], 1, 0)
    b = Chunk.new(np.arange(5, 8), list("fgh"), [""] * 3, 1, 0)
    q.add(a)
    q.add(b)
    assert q.queued == 8
    taken = []
    while (got := q.take(2)) is not None:
        chunk, plan = got
        taken.append((chunk is a, list(plan.rows), plan.overrides))
    assert taken == [(True, [0, 2], ""), (True, [4], ""), (True, [1, 3], "x"), (False, [0, 1], ""),
                     (False, [2], "")]
    assert q.queued == 0


def test_rows_message_round_trip():
    index = np.array([3, 1, 4], dtype=np.int64)
    got = unpack_rows(pack_rows(RequestRows(index, ["a", "ü", ""], ["", "", ""])))
    assert [got.index.tolist(), got.prompts, got.overrides] == [[3, 1, 4], ["a", "ü", ""], ["", "", ""]]
    got = unpack_rows(pack_rows(RequestRows(index, ["a", "b", "c"], ["", '{"n":2}', ""])))
    assert got.overrides == ["", '{"n":2}', ""]


def test_progress_formatting_and_printer():
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "01:05"
    assert format_duration(float("inf")) == "--:--"
    rate, eta = progress_figures(done=600, total=1000, elapsed=2.0, done_at_start=200)
    assert rate == 200 and eta == 2.0
    assert format_bar(500, 3, 1000, 250.0, 2.0, width=10) == \
        "[#####.....]  50.0% 500/1,000 | 250.0 prompts/s | ETA 00:02 | 3 failed"
    out = io.StringIO()
    printer = ProgressPrinter(100, already_done=20, mode="log", interval=3600, stream=out)
    printer.update(np.array([[10, 9], [5, 5]]))  # within the interval: nothing
    printer.close(np.array([[50, 49], [30, 30]]))
    assert out.getvalue().startswith("mpiswarm: 100/100 prompts (100.0%) after ") and "1 failed" in out.getvalue()


def test_pool_keeps_a_slow_rank_from_holding_the_tail():
    from mpiswarm.control import RowPool
    from mpiswarm.inputs import PromptSet

    ps = PromptSet("mem", [f"p{i}" for i in range(10_000)], [str(i) for i in range(10_000)], [""] * 10_000)
    pool = RowPool(ps, np.arange(10_000), n_ranks=4, minimum=4, limit=300)
    # no rate known yet: guided, but never more unfinished rows than the limit
    assert pool.size_for(0, np.zeros(4)) == 300
    pool.handed[:] = [300, 300, 300, 300]
    pool.start -= 2.0  # two seconds in: ranks 0-2 finished 800 rows each, rank 3 only 200
    finished = np.array([800, 800, 800, 200])
    pool.handed[:] = [1000, 1000, 1000, 400]
    pool.next = 10_000 - 1000  # 1,000 rows left in the pool
    assert pool.size_for(0, finished) == 100  # a guided share (125), cut to the limit of unfinished rows
    # rank 3 (100/s) holds 200 unfinished rows = 2 s, as long as everything left takes everyone
    assert pool.size_for(3, finished) == 0


def test_prometheus_parsing_and_engine_deltas():
    from mpiswarm.metrics import engine_deltas, parse_prometheus

    text = """# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{model_name="m",engine="0"} 100.0
vllm:generation_tokens_total{model_name="m",engine="1"} 20
vllm:request_queue_time_seconds_sum{model_name="m"} 1.5
vllm:request_queue_time_seconds_bucket{le="+Inf",model_name="m"} 7
vllm:num_requests_running{model_name="m"} 3
plain_metric 4
"""
    parsed = parse_prometheus(text)
    assert parsed["vllm:generation_tokens_total"] == 120
    assert parsed["vllm:request_queue_time_seconds_sum"] == 1.5 and parsed["plain_metric"] == 4
    later = dict(parsed, **{"vllm:generation_tokens_total": 170.0, "vllm:request_queue_time_seconds_sum": 2.0})
    deltas = engine_deltas(parsed, later)
    assert deltas["engine_generation_tokens"] == 50 and deltas["engine_queue_time_s"] == 0.5
    assert deltas["engine_preemptions"] == -1  # not exported here
    assert set(engine_deltas(None, later).values()) == {-1.0}


def test_next_call_size_never_exceeds_the_limit():
    # --max-prompts-per-call: the static schedule's whole slice, a --batch-size, the dynamic cap
    assert next_call_size(3000, batch_size=None, concurrency=4, cap=None, final=True, limit=1024) == 1024
    assert next_call_size(3000, batch_size=2000, concurrency=4, cap=None, final=False, limit=1024) == 1024
    assert next_call_size(3000, batch_size=None, concurrency=4, cap=2048, final=False, limit=1024) == 1024
    assert next_call_size(100, batch_size=None, concurrency=4, cap=None, final=True, limit=1024) == 100
