"""Retry policy, dispatcher (retries, bisection, failover, stop) and checkpoints, without MPI.

The dispatcher runs against simulated endpoints in a thread; its sleep is injected, so these
tests never really wait for a backoff.
"""
import asyncio
import random
from contextlib import AsyncExitStack

import numpy as np
import pytest

from mpiswarm.checkpoint import (Manifest, ShardWriter, decode_records, encode_record, load_finished, open_run_dir,
                                 shard_path)
from mpiswarm.balance import Chunk
from mpiswarm.client import ClientOptions
from mpiswarm.control import WorkSource
from mpiswarm.errors import CallTimeout, ConnectionFailed, StatusError
from mpiswarm.dispatch import UNANSWERED_DEAD, UNANSWERED_STOPPED, Dispatcher, EndpointPool
from mpiswarm.inputs import InputError
from mpiswarm.records import RankStats, ResultColumns
from mpiswarm.retry import CLIENT_ERROR, FATAL, TRANSIENT, RetryPolicy, classify
from mpiswarm.sim import SimConfig, expected_completion, run_in_thread


def status_error(code):
    return StatusError(code, "e")


def test_classify():
    assert [classify(status_error(c)) for c in (500, 502, 503, 429, 408)] == [TRANSIENT] * 5
    assert [classify(status_error(c)) for c in (400, 413, 422)] == [CLIENT_ERROR] * 3
    assert [classify(status_error(c)) for c in (401, 403, 404)] == [FATAL] * 3
    assert classify(CallTimeout("read timeout")) == TRANSIENT
    assert classify(ConnectionFailed("refused")) == TRANSIENT
    assert classify(ValueError("garbled json")) == TRANSIENT


def test_retry_policy_bounds():
    policy = RetryPolicy(max_attempts=4, max_elapsed_s=10, base_delay_s=1, max_delay_s=3)
    rng = random.Random(0)
    delays = [policy.delay(a, rng) for a in (1, 2, 3, 4, 5)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2 and all(1.5 <= d <= 3 for d in delays[2:])
    assert policy.should_retry(3, 0) and not policy.should_retry(4, 0)
    assert not policy.should_retry(1, 9.5, next_delay_s=1)


class Recorder:
    """An injected sleep: records the delays, returns at once."""

    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def dispatch(urls, prompts, *, batch_size=None, concurrency=2, policy=None, stop_first=False, max_tokens=8,
             max_prompts=1024, limit=None):
    """Run a Dispatcher over one static chunk of ``prompts``; returns what happened
    (``max_prompts``: the client's --max-prompts-per-call; ``limit``: the work source's)."""
    chunk = Chunk.new(np.arange(len(prompts)), prompts, [""] * len(prompts), 1, 0)
    stats = RankStats(rank=0, host="h", endpoint=urls[0])
    finished = []
    sleep = Recorder()
    options = ClientOptions(model="sim-model", batch_size=batch_size, concurrency=concurrency,
                            max_prompts_per_call=max_prompts)

    async def go():
        source = WorkSource(batch_size=batch_size, concurrency=concurrency, cap=None, limit=limit)
        source.add(chunk)
        async with AsyncExitStack() as stack:
            pool = EndpointPool(urls, options, stack)
            d = Dispatcher(pool, stats, policy=policy, on_finished=lambda res, rows: finished.extend(rows),
                           sleep=sleep, rng=random.Random(1))
            stop = asyncio.Event()
            if stop_first:
                stop.set()
            await d.run(source, {"max_tokens": max_tokens}, stop)
            return pool.dead

    dead = asyncio.run(go())
    return chunk.results, stats, sorted(finished), sleep.delays, dead


PROMPTS = [f"prompt number {i} ☃" for i in range(40)]


def expected(prompts, max_tokens=8):
    return [expected_completion(p, max_tokens=max_tokens)[0] for p in prompts]


def test_transient_errors_are_retried_with_backoff():
    config = SimConfig(time_scale=0, error_rate=0.3, error_kinds=("500", "429", "drop"), fault_seed=5)
    with run_in_thread(config) as sim:
        results, stats, finished, delays, dead = dispatch(sim.urls, PROMPTS, batch_size=4)
        faults = sum(sim.stats(0)["faults"].values())
    assert results.ok.all() and results.completion == expected(PROMPTS)
    assert finished == list(range(40)) and not dead
    assert stats.n_retries == faults == len(delays) > 0
    assert stats.n_calls == 10 + faults


def test_bisection_isolates_bad_prompts():
    prompts = list(PROMPTS[:32])
    prompts[5] = prompts[29] = "x" * 2000  # 500 tokens > max_model_len 256
    with run_in_thread(SimConfig(time_scale=0, max_model_len=256)) as sim:
        results, stats, finished, delays, _ = dispatch(sim.urls, prompts)
    assert np.flatnonzero(~results.ok).tolist() == [5, 29]
    assert results.done.all() and finished == list(range(32))
    assert all("maximum context length is 256" in results.error[i] for i in (5, 29))
    good = [i for i in range(32) if i not in (5, 29)]
    assert [results.completion[i] for i in good] == expected([prompts[i] for i in good])
    assert not delays and stats.n_bisections > 0
    assert stats.n_calls <= 1 + 2 * 2 * 5  # about 2 log2(32) calls per bad prompt


def test_failover_to_the_next_endpoint_when_one_crashes():
    config = SimConfig(time_scale=0, crash_after=1, fault_endpoints=(0,))
    with run_in_thread(config, count=2) as sim:
        results, stats, finished, _, dead = dispatch(sim.urls, PROMPTS, batch_size=10, concurrency=1)
        served = [sim.stats(i)["prompts"] for i in range(2)]
    assert results.ok.all() and results.completion == expected(PROMPTS)
    assert list(dead) == [sim.urls[0]] and stats.n_failovers == 1
    assert served == [10, 30]


def test_every_endpoint_down_leaves_rows_for_a_resume():
    config = SimConfig(time_scale=0, crash_after=1)
    with run_in_thread(config, count=2) as sim:
        results, stats, finished, _, dead = dispatch(sim.urls, PROMPTS, batch_size=10, concurrency=1)
    assert results.ok.sum() == 20 and finished == list(range(20))
    assert not results.done[20:].any() and set(results.error[20:]) == {UNANSWERED_DEAD}
    assert len(dead) == 2


def test_gives_up_on_an_endpoint_after_max_attempts():
    config = SimConfig(time_scale=0, error_rate=1.0, error_kinds=("500",), fault_endpoints=(0,))
    with run_in_thread(config, count=2) as sim:
        results, stats, _, delays, dead = dispatch(sim.urls, PROMPTS, policy=RetryPolicy(max_attempts=3))
    assert results.ok.all()
    assert len(delays) == 2 and stats.n_retries == 2 and "3 attempts failed" in dead[sim.urls[0]]


def test_stop_sends_nothing_more():
    with run_in_thread(SimConfig(time_scale=0)) as sim:
        results, stats, finished, _, _ = dispatch(sim.urls, PROMPTS, stop_first=True)
        assert sim.stats(0)["http_requests"] == 0
    assert not results.done.any() and set(results.error) == {UNANSWERED_STOPPED} and stats.n_calls == 0


def manifest(**changes):
    base = dict(input="/in.jsonl", input_sha256="ab" * 32, n_rows=10, n=2, fingerprint="f1",
                options={"sampling": {"max_tokens": 8}})
    return Manifest(**{**base, **changes})


def test_run_dir_resume_mismatch_and_restart(tmp_path):
    out = str(tmp_path / "out.h5")
    path, m, resumed = open_run_dir(out, manifest(), restart=False)
    assert path == out + ".run" and not resumed and m.attempt == 0
    _, m, resumed = open_run_dir(out, manifest(), restart=False)
    assert resumed and m.attempt == 1
    with pytest.raises(InputError, match="cannot resume: its input differs"):
        open_run_dir(out, manifest(input_sha256="cd" * 32), restart=False)
    with pytest.raises(InputError, match=r"its options differ \(sampling\); use --restart"):
        open_run_dir(out, manifest(fingerprint="f2", options={"sampling": {"max_tokens": 9}}), restart=False)
    _, m, resumed = open_run_dir(out, manifest(fingerprint="f2"), restart=True)
    assert not resumed and m.attempt == 0


def test_shards_round_trip_and_skip_a_torn_line(tmp_path):
    res = ResultColumns.pending(np.array([7, 3, 5, 9]), 2, rank=1)
    res.completion[:] = ["a", "b", "c ☃", "d", "e", "f", "\ud800", "h"]
    res.finish_reason[:] = ["stop"] * 8
    res.answered([0, 1, 3])
    res.fail([2], "HTTP 400: too long")  # final
    writer = ShardWriter(shard_path(str(tmp_path), 1, 0))
    writer.append(res, range(2))
    writer.append(res, [2, 3])
    writer.close()
    torn = encode_record(res, [0])
    with open(shard_path(str(tmp_path), 2, 0), "wb") as fh:
        fh.write(torn[: len(torn) - 3])  # a writer killed mid-record
    assert decode_records(torn[:-3]) == [] and len(decode_records(torn + torn[:5])) == 1
    loaded = load_finished(str(tmp_path), 2)
    assert loaded.index.tolist() == [3, 5, 7, 9]
    # one binary format for the gather and the checkpoints: a lone surrogate is stored as the file stores it
    assert loaded.completion == ["c ☃", "d", "", "", "a", "b", "?", "h"]
    assert loaded.ok.tolist() == [True, False, True, True] and loaded.error[1] == "HTTP 400: too long"
    assert loaded.done.all() and loaded.rank.tolist() == [1] * 4


def test_a_400_naming_the_list_limit_splits_by_it_not_by_halving():
    """Issue 12, defect 4: vLLM's 400 "prompt list length 3000 exceeds the maximum allowed count
    of 1024" splits the list into lists of 1024 (one refused call), and later lists are cut to
    it before they are sent; halving took 7 calls, 3 refused."""
    prompts = [f"p{i}" for i in range(3000)]
    with run_in_thread(SimConfig(time_scale=0)) as sim:  # vLLM's default cap, 1024
        results, stats, finished, delays, _ = dispatch(sim.urls, prompts, concurrency=1, max_prompts=5000,
                                                       max_tokens=2)
        refused = sim.stats(0)["bad_requests"]
    assert results.ok.all() and results.completion == expected(prompts, max_tokens=2) and not delays
    assert (stats.n_calls, stats.n_failed_calls, stats.n_bisections, refused) == (4, 1, 0, 1)
    with run_in_thread(SimConfig(time_scale=0, max_prompts_per_call=300)) as sim:  # a server set lower
        results, stats, *_ = dispatch(sim.urls, prompts, batch_size=1000, concurrency=1, max_tokens=2)
    assert results.ok.all() and stats.n_bisections == 0
    assert (stats.n_calls, stats.n_failed_calls) == (1 + 3 * 4, 1)  # one 1000 refused, then lists of 300


def test_no_call_carries_more_than_max_prompts_per_call():
    prompts = [f"p{i}" for i in range(2100)]
    with run_in_thread(SimConfig(time_scale=0)) as sim:
        results, stats, *_ = dispatch(sim.urls, prompts, concurrency=4, limit=1024, max_tokens=2)  # static: whole slice
        assert sim.stats(0)["bad_requests"] == 0
    assert results.ok.all() and (stats.n_calls, stats.n_failed_calls) == (3, 0)


def test_prompt_limit_parses_vllms_message():
    from mpiswarm.dispatch import prompt_limit

    assert prompt_limit("HTTP 400: prompt list length 3000 exceeds the maximum allowed count of 1024. To increase "
                        "this limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable. (parameter=prompt)") == 1024
    assert prompt_limit("HTTP 400: This model's maximum context length is 512 tokens.") is None
