"""A bounded soak test (issue 16, item 7): many short jobs, every mode — prompt lists and chat,
the static and the dynamic schedule, the virtual layout, a tree reduction — each against
simulated endpoints with random faults (HTTP errors, dropped connections, timeouts, bad
replies, jitter). Each job must end within its bound, and every row must be right or failed
with a reason. Reproducible: the draws come from one seed."""
from __future__ import annotations

import random
import time

import h5py

from mpiswarm.sim import BAD_REPLY_KINDS, chat_prompt, expected_completion
from mpiswarm.store import read_results

from ..conftest import finish, sim_counter, start_mpiswarm, write_jsonl
from .test_run import endpoint_args, make_rows

JOBS = 18
JOB_BOUND_S = 120.0  # one job, faults and backoffs included
MODES = {
    "lists-dynamic": [],
    "lists-static": ["--schedule", "static"],
    "chat": ["--api", "chat", "--concurrency", 5],
    "chat-static": ["--api", "chat", "--concurrency", 5, "--schedule", "static"],
    "virtual": ["--layout", "virtual"],
    "reduce": ["--reduce-prompt", "Combine: {responses}", "--fanin", 4],
}
KINDS = ("500", "503", "429", "drop", "timeout") + BAD_REPLY_KINDS


def check_rows(data, rows, chat: bool) -> int:
    """Every row right or failed with a reason; returns how many failed."""
    failed = 0
    for i, row in enumerate(rows):
        if not data["ok"][i]:
            assert data["error"][i], f"row {i} failed without a reason"
            failed += 1
            continue
        prompt = chat_prompt([{"role": "user", "content": row["prompt"]}]) if chat else row["prompt"]
        text, reason, _ = expected_completion(prompt, max_tokens=6)
        assert (data["completion"][i], data["finish_reason"][i]) == (text, reason), f"row {i}"
    return failed


def test_soak_many_short_jobs_with_random_faults(tmp_path, sim_factory):
    rng = random.Random(16)
    modes = [list(MODES)[k % len(MODES)] for k in range(JOBS)]
    rng.shuffle(modes)
    longest, injected, failed_rows = 0.0, 0, 0
    for k, mode in enumerate(modes):
        kinds = rng.sample(KINDS, rng.randint(1, 4))
        rate = rng.choice([0.05, 0.1, 0.2, 0.25])
        sim = sim_factory("--count", 2, "--time-scale", 0, "--jitter", rng.choice([0, 0.02]), "--error-rate", rate,
                          "--error-kinds", ",".join(kinds), "--fault-seed", k)
        rows = make_rows(rng.randint(20, 80))
        work = tmp_path / f"job{k}"
        work.mkdir()
        args = ["run", write_jsonl(work / "in.jsonl", rows), "-o", work / "out.h5", *endpoint_args(sim),
                "--max-tokens", 6, "--batch-size", rng.choice([3, 8]), "--request-timeout", 1,
                "--revive-interval", 1, "-q", *MODES[mode]]
        t0 = time.monotonic()
        res = finish(start_mpiswarm(2, args), timeout=JOB_BOUND_S)
        elapsed = time.monotonic() - t0
        assert res.returncode in (0, 3), f"job {k} ({mode}, faults {kinds} at {rate}): {res.stdout}{res.stderr}"
        data = read_results(work / "out.h5")
        failed = check_rows(data, rows, chat=mode.startswith("chat"))
        assert (res.returncode == 0) == (failed == 0) or mode == "reduce"
        if mode == "reduce" and failed == 0:
            with h5py.File(work / "out.h5") as f:
                assert "final" in f["reduce"]
        longest = max(longest, elapsed)
        injected += int(sum(sim_counter(u, "mpiswarm_sim:faults_injected_total") for u in sim.urls))
        failed_rows += failed
        sim.stop()
    print(f"soak: {JOBS} jobs, modes {sorted(set(modes))}, {injected} faults injected, {failed_rows} rows failed "
          f"with a reason, longest job {longest:.1f} s")
    assert injected > 0
