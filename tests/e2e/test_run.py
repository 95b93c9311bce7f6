"""End to end: ``mpiexec -n N mpiswarm run`` against simulated endpoints on loopback,
checking every row of the HDF5 file and the exit code (tier 3)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from mpiswarm.partition import contiguous_bounds
from mpiswarm.sim import chat_prompt, expected_completion
from mpiswarm.store import read_results

from ..conftest import run_mpiswarm, sim_counter, write_jsonl

MODEL = "sim-model"
WORDS = ["gene", "протеин", "細胞", "🧬", "cell", "α-helix", "line"]


def make_rows(n_rows: int) -> list[dict]:
    return [{"custom_id": f"id-{i:04d}", "prompt": f"Q{i}: {WORDS[i % 7]} {' '.join(WORDS[: i % 5])}?"}
            for i in range(n_rows)]


@pytest.fixture(autouse=True)
def parallel_reader(monkeypatch):
    """Every rank reads a part of the input, however small (mpiswarm.read): these runs check
    the parallel reader end to end."""
    monkeypatch.setenv("MPISWARM_PARALLEL_READ_MIN_BYTES", "0")


def endpoint_args(sim):
    return ["--model", MODEL, "--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0]]


def assert_rows(data, rows, *, n=1, max_tokens=256, seed=None, stop=None):
    """Every row in input order with the simulator's answer for its prompt."""
    assert data["prompt"].tolist() == [r["prompt"] for r in rows]
    assert data["custom_id"].tolist() == [r.get("custom_id", str(i)) for i, r in enumerate(rows)]
    assert data["ok"].all(), data["error"][~data["ok"]][:3]
    assert (data["error"] == "").all()
    completion = data["completion"].reshape(len(rows), n)
    finish = data["finish_reason"].reshape(len(rows), n)
    for i, row in enumerate(rows):
        for j in range(n):
            text, reason, _ = expected_completion(
                row["prompt"], seed=row.get("seed", seed), j=j, max_tokens=row.get("max_tokens", max_tokens),
                stop=row.get("stop", stop))
            assert (completion[i, j], finish[i, j]) == (text, reason), f"row {i} choice {j}"


@pytest.mark.parametrize("batch_size, calls_per_rank", [(None, 1), (25, 4)])
def test_four_ranks_every_row_in_order(tmp_path, sim_factory, batch_size, calls_per_rank):
    """Choices shuffled by the endpoint and calls answered out of order: rows still land in order."""
    rows = make_rows(400)
    sim = sim_factory("--count", 4, "--time-scale", 0.02, "--shuffle-choices", "--jitter", 0.05)
    extra = ["--schedule", "static"] + (["--batch-size", batch_size, "--concurrency", 4] if batch_size else [])
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--seed", 7, *extra])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert_rows(data, rows, seed=7)
    bounds = contiguous_bounds(400, 4)
    assert data["rank"].tolist() == np.repeat(np.arange(4), np.diff(bounds)).tolist()
    assert (data["latency_s"] > 0).all()
    assert data["prompt_tokens"].tolist() == [-1] * 400  # a list's usage is a sum over its prompts
    attrs = data["attrs"]
    assert attrs["complete"] and attrs["n_ok"] == 400 and attrs["n_ranks"] == 4 and attrs["model"] == MODEL
    assert attrs["params"]["sampling"]["seed"] == 7
    assert all(attrs[f"time_{p}_s"] >= 0 for p in ("read", "health", "scatter", "requests", "gather", "write"))
    assert data["ranks"]["n_calls"].tolist() == [calls_per_rank] * 4
    assert data["ranks"]["endpoint"].tolist() == [f"http://127.0.0.1:{p}/v1" for p in sim.ports]
    assert data["ranks"]["completion_tokens"].sum() > 0
    # each endpoint's own /metrics, read before and after: it generated what its rank was told
    assert data["ranks"]["engine_generation_tokens"].tolist() == data["ranks"]["completion_tokens"].tolist()
    assert data["ranks"]["engine_requests"].tolist() == [100] * 4
    assert (data["ranks"]["engine_queue_time_s"] >= 0).all() and (data["ranks"]["engine_preemptions"] == 0).all()
    for url in sim.urls:  # each endpoint reached, in a handful of calls
        assert sim_counter(url) == calls_per_rank
    assert "400 prompts on 4 ranks: 400 ok, 0 failed" in res.stdout
    assert str(out) in res.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl", "out.h5"] or sorted(
        p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.h5"]


def test_dynamic_schedule_feeds_the_fast_endpoints(tmp_path, sim_factory):
    """One endpoint at a quarter speed: the dynamic schedule gives it less work, rows stay in order."""
    rows = make_rows(1200)
    sim = sim_factory("--count", 4, "--time-scale", 1.0, "--speeds", "1,1,1,0.25", "--max-num-seqs", 32)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(4, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--max-tokens", 8, "--max-num-seqs", 32, "--progress", "log", "--progress-interval", 0.5])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert_rows(data, rows, max_tokens=8)
    served = np.bincount(data["rank"], minlength=4)
    assert served.sum() == 1200 and served[3] < 0.6 * served[:3].min(), served
    assert data["ranks"]["n_prompts"].tolist() == served.tolist()
    assert data["attrs"]["params"]["schedule"] == "dynamic"
    lines = [l for l in res.stdout.splitlines() if l.startswith("mpiswarm: ") and "prompts (" in l]
    assert lines and lines[-1].startswith("mpiswarm: 1,200/1,200 prompts (100.0%)")


def test_progress_bar_mode(tmp_path, sim_factory):
    rows = make_rows(50)
    sim = sim_factory("--count", 2, "--time-scale", 0.5)
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "o.h5",
                           *endpoint_args(sim), "--progress", "bar"])
    assert res.returncode == 0, res.stderr
    bars = [l for l in res.stdout.splitlines() if l.startswith("[")]  # "\r" reads as a line break here
    assert bars and bars[-1].startswith("[" + "#" * 30 + "] 100.0% 50/50 | ") and "prompts/s | ETA" in bars[-1]


def test_n2_and_per_row_overrides(tmp_path, sim_factory):
    rows = make_rows(60)
    for i, row in enumerate(rows):
        if i % 3 == 1:
            row["max_tokens"] = 3
        if i % 4 == 2:
            row["seed"] = 1000 + i
        if i % 10 == 5:
            row["stop"] = [" "]
    sim = sim_factory("--count", 2, "--time-scale", 0, "--shuffle-choices")
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--n", 2, "--max-tokens", 12, "--seed", 3])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert data["completion"].shape == (60, 2)
    assert_rows(data, rows, n=2, max_tokens=12, seed=3)
    assert set(data["finish_reason"].ravel()) <= {"stop", "length"}
    assert "length" in set(data["finish_reason"].ravel())


def test_chat_api_one_call_per_prompt(tmp_path, sim_factory):
    rows = make_rows(30)
    sim = sim_factory("--count", 2, "--time-scale", 0.01, "--jitter", 0.02)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--api", "chat", "--max-tokens", 9, "--concurrency", 8, "--schedule", "static",
                           "--chat-route", "single"])  # one call a prompt (the batch route: test_chat_rows.py)
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    for i, row in enumerate(rows):
        text, reason, n_tokens = expected_completion(chat_prompt([{"role": "user", "content": row["prompt"]}]),
                                                     max_tokens=9)
        assert data["completion"][i] == text and data["finish_reason"][i] == reason
        assert data["completion_tokens"][i] == n_tokens  # one prompt a call: usage is per prompt
    assert [sim_counter(u) for u in sim.urls] == [15, 15]
    assert data["ranks"]["n_calls"].tolist() == [15, 15]


def test_txt_input_more_ranks_than_prompts(tmp_path, sim_factory):
    prompts = ["first prompt", "второй ☃"]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    sim = sim_factory("--count", 3, "--time-scale", 0)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(3, ["run", path, "-o", out, *endpoint_args(sim), "--max-tokens", 5, "--schedule", "static"])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert_rows(data, [{"prompt": p} for p in prompts], max_tokens=5)
    assert data["rank"].tolist() == [0, 1]
    assert data["ranks"]["n_prompts"].tolist() == [1, 1, 0]
    assert data["ranks"]["n_calls"].tolist() == [1, 1, 0]


def test_openai_batch_rows_and_hostfile(tmp_path, sim_factory):
    rows = make_rows(12)
    batch = [{"custom_id": r["custom_id"], "method": "POST", "url": "/v1/completions",
              "body": {"model": MODEL, "prompt": r["prompt"], "max_tokens": 4 + i % 2}} for i, r in enumerate(rows)]
    sim = sim_factory("--count", 2, "--time-scale", 0)
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"# two agents\n127.0.0.1\t{sim.ports[1]}\trole=a\n127.0.0.1:{sim.ports[0]}\n")
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", batch), "-o", out, "--model", MODEL,
                           "--hostfile", hostfile, "--schedule", "static"])
    assert res.returncode == 0, res.stderr
    data = read_results(out)
    assert_rows(data, [dict(r, max_tokens=4 + i % 2) for i, r in enumerate(rows)])
    assert data["ranks"]["endpoint"].tolist() == [sim.urls[1], sim.urls[0]]
    assert data["ranks"]["n_calls"].tolist() == [2, 2]  # two override groups per rank


LONG = "".join('{"prompt": "filler %d"}\n' % i for i in range(200))  # the next line is in the last rank's part
BAD_INPUTS = {
    "not_json": ('{"prompt": "a"}\n{"prompt": "b",\n', "in.jsonl:2: not valid JSON"),
    "missing_prompt": ('{"prompt": "a"}\n{"question": "b"}\n', "in.jsonl:2: no 'prompt' field"),
    "non_string_prompt": ('{"prompt": ["a", "b"]}\n', "in.jsonl:1: 'prompt' must be a string, got list"),
    "duplicate_custom_id": ('{"prompt": "a", "custom_id": "x"}\n{"prompt": "b", "custom_id": "x"}\n',
                            "in.jsonl:2: duplicate custom_id 'x' (first on line 1)"),
    "duplicate_across_ranks": ('{"prompt": "a", "custom_id": "x"}\n' + LONG + '{"prompt": "b", "custom_id": "x"}\n',
                               "in.jsonl:202: duplicate custom_id 'x' (first on line 1)"),
    "default_id_collision": (LONG + '{"prompt": "b", "custom_id": "1"}\n',
                             "in.jsonl: prompt 1 has no custom_id and its default id '1' repeats the custom_id on line 201"),
    "invalid_utf8": (LONG.encode() + b'{"prompt": "\xff"}\n', "in.jsonl:201: not valid UTF-8 (invalid start byte"),
    "lone_surrogate": (LONG + '{"prompt": "\\ud800"}\n',
                       "in.jsonl: prompt 200 (custom_id '200') holds a lone surrogate escape and is not valid Unicode"),
    "missing_file": (None, "in.jsonl: no such file"),
}


@pytest.mark.parametrize("n_ranks", [2, 4])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_sends_nothing(tmp_path, sim_factory, case, n_ranks):
    text, message = BAD_INPUTS[case]
    path = tmp_path / "in.jsonl"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    sim = sim_factory("--count", n_ranks, "--time-scale", 0)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(n_ranks, ["run", path, "-o", out, *endpoint_args(sim)])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("mpiswarm: error: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (["in.jsonl"] if text else [])
    assert [sim_counter(u) for u in sim.urls] == [0] * n_ranks


def test_parallel_read_threshold_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MPISWARM_PARALLEL_READ_MIN_BYTES", "lots")
    path = write_jsonl(tmp_path / "in.jsonl", make_rows(3))
    res = run_mpiswarm(2, ["run", path, "-o", tmp_path / "o.h5", "--model", MODEL])
    assert res.returncode == 2
    assert res.stderr.strip() == "mpiswarm: error: MPISWARM_PARALLEL_READ_MIN_BYTES: must be a number of bytes, got 'lots'"


def test_usage_errors_exit_2(tmp_path):
    res = run_mpiswarm(2, ["run", tmp_path / "in.jsonl", "-o", tmp_path / "o.h5", "--model", MODEL,
                           "--endpoint", "http://127.0.0.1:{prt}/v1"])
    assert res.returncode == 2 and "unknown placeholder {prt}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run_mpiswarm(2, ["run", "x.jsonl", "-o", tmp_path / "o.h5"])
    assert res.returncode == 2 and "--model" in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # argparse's usage line and its error, once


def test_endpoint_that_never_becomes_healthy(tmp_path, sim_factory):
    rows = make_rows(8)
    sim = sim_factory("--count", 2, "--time-scale", 0, "--slow-start", 600, "--fault-endpoints", 1)
    out = tmp_path / "out.h5"
    t0 = time.monotonic()
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--health-timeout", 2])
    assert time.monotonic() - t0 < 60
    assert res.returncode == 4, res.stdout + res.stderr
    assert "rank 1 on " in res.stdout and f"endpoint {sim.urls[1]} unavailable: not healthy after 2 s" in res.stdout
    assert "rank 0" not in res.stdout
    assert not out.exists()
    assert [sim_counter(u) for u in sim.urls] == [0, 0]


def test_over_long_prompt_fails_alone_exit_3(tmp_path, sim_factory):
    """A list that fails with HTTP 400 is bisected until only the bad prompt fails."""
    rows = make_rows(40)
    rows[13]["prompt"] = "long " * 400  # ~500 tokens > max_model_len 256
    sim = sim_factory("--count", 2, "--time-scale", 0, "--max-model-len", 256)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--max-tokens", 8])
    assert res.returncode == 3, res.stderr
    data = read_results(out)
    assert np.flatnonzero(~data["ok"]).tolist() == [13]
    assert data["error"][13].startswith("HTTP 400: This model's maximum context length is 256 tokens")
    assert data["completion"][13] == ""
    assert [data["completion"][i] for i in range(40) if i != 13] == [
        expected_completion(r["prompt"], max_tokens=8)[0] for i, r in enumerate(rows) if i != 13]
    assert data["attrs"]["n_ok"] == 39 and data["attrs"]["complete"]
    assert "39 ok, 1 failed" in res.stdout and "1 x HTTP 400" in res.stdout
    assert data["ranks"]["n_bisections"].tolist()[0] > 0 and data["ranks"]["n_bisections"].tolist()[1] == 0
    assert not (tmp_path / "out.h5.run").exists()


def test_chat_concurrency_is_prompts_in_flight(tmp_path, sim_factory):
    """--api chat sends one prompt a call with --concurrency of them in flight: 40 prompts at
    concurrency 20 take about two call latencies, not forty."""
    rows = make_rows(40)
    sim = sim_factory("--count", 1, "--time-scale", 5.0)
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", tmp_path / "o.h5",
                           *endpoint_args(sim), "--api", "chat", "--max-tokens", 4, "--concurrency", 20,
                           "--chat-route", "single"])
    assert res.returncode == 0, res.stderr
    data = read_results(tmp_path / "o.h5")
    one_call = float(np.median(data["latency_s"]))
    assert data["attrs"]["time_requests_s"] < 6 * one_call, (data["attrs"]["time_requests_s"], one_call)


@pytest.mark.parametrize("rows, options, message", [
    (None, ["--n", 2, "--temperature", 0], "command line: --n must be 1 when using greedy sampling (--temperature 0)"),
    (None, ["--top-p", 0], "command line: --top-p must be a number in (0, 1]"),
    (None, ["--temperature", 100], "command line: --temperature must be a number in [0, 2]"),
    ([{"prompt": "a"}, {"prompt": "b", "temperature": 0}], ["--n", 2],
     "in.jsonl:2: --n (command line) must be 1 when using greedy sampling ('temperature' 0), got 2"),
    ([{"prompt": "a"}, {"prompt": "b", "top_p": 0}], [], "in.jsonl:2: 'top_p' must be a number in (0, 1]"),
])
def test_sampling_vllm_refuses_exits_2_before_anything_is_sent(tmp_path, sim_factory, rows, options, message):
    """Issue 12, defect 2: greedy n > 1 (and top_p, temperature) were sent, refused by vLLM with
    400 on every call and bisected down to single rows; now one line naming the option or the
    row, exit 2, nothing sent, no output."""
    sim = sim_factory("--count", 2, "--time-scale", 0)
    src = write_jsonl(tmp_path / "in.jsonl", rows or make_rows(6))
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", src, "-o", out, *endpoint_args(sim), *options])
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpiswarm: error: ") and message in lines[0], res.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]
    assert [sim_counter(u) for u in sim.urls] == [0, 0]


def test_endpoint_that_does_not_serve_the_model_fails_fast(tmp_path, sim_factory):
    """Issue 12, defect 3: a wrong --model passed the health check (any single card was taken as
    ours) and every call then failed 404. Now exit 4 at once, one line a rank naming the rank,
    the URL and the names the endpoint serves; nothing sent, no output."""
    sim = sim_factory("--count", 2, "--time-scale", 0, "--model", "tiny", "--lora", "tiny-sql")
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(8))
    out = tmp_path / "out.h5"
    base = ["--endpoint", "http://127.0.0.1:{port}/v1", "--base-port", sim.ports[0], "--progress", "none"]
    t0 = time.monotonic()
    res = run_mpiswarm(2, ["run", src, "-o", out, "--model", "llama-wrong", *base, "--health-timeout", 300])
    assert time.monotonic() - t0 < 60  # no waiting for a deadline
    assert res.returncode == 4, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if "unavailable" in line]
    assert len(lines) == 2
    for rank, (line, url) in enumerate(zip(lines, sim.urls)):
        assert line.startswith(f"mpiswarm: rank {rank} on ") and (
            f"endpoint {url} unavailable: it does not serve --model 'llama-wrong' (it serves: tiny, tiny-sql)") in line
    assert not out.exists() and [sim_counter(u) for u in sim.urls] == [0, 0]
    # the adapter is served: the run goes through
    res = run_mpiswarm(2, ["run", src, "-o", out, "--model", "tiny-sql", *base])
    assert res.returncode == 0, res.stdout + res.stderr


def test_min_endpoints_goes_on_without_an_endpoint_serving_another_model(tmp_path, sim_factory):
    """--min-endpoints: an endpoint that does not serve --model counts as one that is down."""
    right = sim_factory("--time-scale", 0)
    wrong = sim_factory("--time-scale", 0, "--model", "other-model")
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"127.0.0.1\t{right.ports[0]}\n127.0.0.1\t{wrong.ports[0]}\n")
    rows = make_rows(10)
    out = tmp_path / "out.h5"
    res = run_mpiswarm(2, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, "--model", MODEL,
                           "--hostfile", hostfile, "--min-endpoints", 1, "--max-tokens", 8, "--progress", "none"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"endpoint {wrong.urls[0]} unavailable: it does not serve --model 'sim-model' (it serves: other-model)" \
        in res.stdout
    assert_rows(read_results(out), rows, max_tokens=8)
    assert sim_counter(wrong.urls[0]) == 0


@pytest.mark.parametrize("schedule, extra", [("static", []), ("dynamic", ["--batch-size", 2000])])
def test_no_call_carries_more_prompts_than_the_endpoint_accepts(tmp_path, sim_factory, schedule, extra):
    """Issue 12, defect 4: --schedule static sent a rank's 3,000 prompts as one list, which vLLM
    refuses over VLLM_MAX_COMPLETION_PROMPTS (1024): 7 calls, 3 refused. Now lists of at most
    --max-prompts-per-call (1024), on both schedules."""
    sim = sim_factory("--time-scale", 0)
    rows = [{"prompt": f"p{i}"} for i in range(3000)]
    out = tmp_path / "out.h5"
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--schedule", schedule, "--max-tokens", 2, "--progress", "none", *extra])
    assert res.returncode == 0, res.stdout + res.stderr
    data = read_results(out)
    assert data["ok"].all() and data["ranks"]["n_failed_calls"].tolist() == [0]
    assert data["ranks"]["n_bisections"].tolist() == [0]
    assert sim_counter(sim.urls[0]) == data["ranks"]["n_calls"][0] >= 3
    assert data["attrs"]["params"]["max_prompts_per_call"] == 1024


def test_a_server_with_a_lower_limit_splits_by_it(tmp_path, sim_factory):
    """A server started with VLLM_MAX_COMPLETION_PROMPTS=200 answers 400 naming 200: the list is
    split into lists of 200 (not halved), and later calls are cut to 200 before they are sent."""
    sim = sim_factory("--time-scale", 0, "--max-prompts-per-call", 200)
    rows = [{"prompt": f"p{i}"} for i in range(1000)]
    out = tmp_path / "out.h5"
    res = run_mpiswarm(1, ["run", write_jsonl(tmp_path / "in.jsonl", rows), "-o", out, *endpoint_args(sim),
                           "--schedule", "static", "--concurrency", 1, "--max-tokens", 2, "--progress", "none"])
    assert res.returncode == 0, res.stdout + res.stderr
    ranks = read_results(out)["ranks"]
    assert (ranks["n_calls"][0], ranks["n_failed_calls"][0], ranks["n_bisections"][0]) == (6, 1, 0)
