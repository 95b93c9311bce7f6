"""Tests of the vLLM simulator (mpiswarm.sim), over real HTTP on 127.0.0.1."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx2
import pytest

from mpiswarm.launch import cpu_seconds
from mpiswarm.sim import (
    MAX_WORDS,
    SimConfig,
    chat_prompt,
    count_tokens,
    decode_step_seconds,
    draw_fault,
    expected_completion,
    find_free_port_block,
    run_in_thread,
    start_process,
)
from mpiswarm.sim.__main__ import main as cli_main

pytestmark = pytest.mark.timeout(60)

PROMPTS = [f"Question {i}: what is {i} squared?" for i in range(40)] + ["", "naïve café 東京 🙂"]


# ---------------------------------------------------------------------------- helpers


def root(url: str) -> str:
    return url[: -len("/v1")]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` (a readiness condition) until true, or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"bad exposition line: {line!r}"
        samples.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return samples


def metric(samples, name: str, **labels) -> float:
    values = [v for n, lb, v in samples if n == name and labels.items() <= lb.items()]
    assert len(values) == 1, (name, labels, values)
    return values[0]


def assert_vllm_error(response, status: int, message_part: str = "", flat: bool = False) -> dict:
    """The error body vLLM 0.32 sends, ``{"error": {"message", "type", "param", "code"}}`` (or
    older vLLM's flat one); returns the inner object."""
    assert response.status_code == status
    body = response.json()
    if flat:
        assert set(body) == {"object", "message", "type", "param", "code"} and body["object"] == "error"
        del body["object"]
    else:
        assert set(body) == {"error"}
        body = body["error"]
    assert set(body) == {"message", "type", "param", "code"}
    assert body["code"] == status
    assert message_part in body["message"]
    return body


@pytest.fixture(scope="module")
def http():
    with httpx2.Client(trust_env=False, timeout=10.0) as client:
        yield client


@pytest.fixture(scope="module")
def sim():
    """One instant endpoint with a small context, shared by the protocol tests."""
    with run_in_thread(SimConfig(time_scale=0, max_model_len=512, model="tiny")) as handle:
        yield handle


def complete(http, url: str, **body):
    return http.post(url + "/completions", json=body)


# ----------------------------------------------------------------------- pure models


def test_expected_completion_is_deterministic_and_varied():
    a = expected_completion("hello", seed=1, max_tokens=100)
    assert a == expected_completion("hello", seed=1, max_tokens=100)
    assert a != expected_completion("hellp", seed=1, max_tokens=100)
    assert a != expected_completion("hello", seed=2, max_tokens=100)
    assert a != expected_completion("hello", seed=1, j=1, max_tokens=100)
    lengths = [expected_completion(f"p{i}", max_tokens=None)[2] for i in range(2000)]
    assert min(lengths) == 1 and max(lengths) == MAX_WORDS
    assert len(set(expected_completion(p)[0] for p in PROMPTS)) == len(PROMPTS)
    for p in PROMPTS:  # valid unicode, words = tokens
        text, finish, n = expected_completion(p, max_tokens=None)
        text.encode("utf-8")
        assert finish == "stop" and n == len(text.split(" "))


def test_max_tokens_truncates_without_changing_the_text():
    full, finish, n = expected_completion("truncate me", max_tokens=None)
    assert n > 3 and finish == "stop"
    text, finish, k = expected_completion("truncate me", max_tokens=3)
    assert (finish, k) == ("length", 3)
    assert text == " ".join(full.split(" ")[:3])
    assert expected_completion("truncate me", max_tokens=n) == (full, "stop", n)


def test_stop_strings_cut_at_the_first_match():
    full, _, n = expected_completion("stop me", max_tokens=None)
    words = full.split(" ")
    target = words[n // 2]
    text, finish, k = expected_completion("stop me", max_tokens=None, stop=["zzz-none", target])
    assert finish == "stop"
    assert text == full[: full.index(target)]
    assert k == full[: full.index(target) + len(target)].count(" ") + 1
    assert expected_completion("stop me", max_tokens=None, stop="zzz-none") == (full, "stop", n)


def test_count_tokens_and_chat_prompt():
    assert count_tokens("") == 1 and count_tokens("abcd") == 1 and count_tokens("abcde") == 2
    assert count_tokens("é" * 4) == 2  # 8 UTF-8 bytes
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "},
                                             {"type": "text", "text": "there"}]}]
    assert chat_prompt(messages) == "be brief\nhi there"


def test_step_time_grows_with_batch_and_throughput_saturates():
    config = SimConfig()
    steps = [decode_step_seconds(r, config, 1.0) for r in (1, 64, 256)]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    throughput = [r / decode_step_seconds(r, config, 1.0) for r in (1, 8, 64, 256)]
    assert throughput == sorted(throughput)
    quarter, full = decode_step_seconds(8, config, 0.25), decode_step_seconds(8, config, 1.0)
    assert quarter == pytest.approx(4 * full)


def test_fault_draws_are_reproducible():
    draws = [draw_fault(7, 0, call, 0.5, ("500", "drop"), 1.0) for call in range(1, 200)]
    assert draws == [draw_fault(7, 0, call, 0.5, ("500", "drop"), 1.0) for call in range(1, 200)]
    kinds = [d.kind for d in draws]
    assert 60 < kinds.count(None) < 140 and {"500", "drop"} <= set(kinds)
    assert all(0 <= d.delay < 1.0 for d in draws)
    assert draws != [draw_fault(8, 0, call, 0.5, ("500", "drop"), 1.0) for call in range(1, 200)]


def test_config_validation():
    with pytest.raises(ValueError, match="error kinds"):
        SimConfig(error_kinds=("418",))
    with pytest.raises(ValueError, match="speeds"):
        SimConfig(speeds=(1.0, 0.5)).check_count(3)
    with pytest.raises(SystemExit):
        cli_main(["--count", "2", "--speeds", "1,1,1"])


# ------------------------------------------------------------------------- protocol


def test_prompt_list_answers_match_expected(sim, http):
    r = complete(http, sim.urls[0], model="tiny", prompt=PROMPTS, max_tokens=12, seed=3,
                 temperature=0.7, top_p=0.9, some_unknown_key=True)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "text_completion" and data["id"].startswith("cmpl-")
    assert data["model"] == "tiny" and isinstance(data["created"], int)
    assert [c["index"] for c in data["choices"]] == list(range(len(PROMPTS)))
    completion_tokens = 0
    for choice, prompt in zip(data["choices"], PROMPTS):
        text, finish, n = expected_completion(prompt, seed=3, max_tokens=12)
        assert (choice["text"], choice["finish_reason"]) == (text, finish)
        assert choice["logprobs"] is None and choice["stop_reason"] is None
        completion_tokens += n
    usage = data["usage"]
    assert usage["prompt_tokens"] == sum(count_tokens(p) for p in PROMPTS)
    assert usage["completion_tokens"] == completion_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + completion_tokens
    assert {c["finish_reason"] for c in data["choices"]} == {"stop", "length"}


def test_single_string_prompt_and_default_max_tokens(sim, http):
    data = complete(http, sim.urls[0], prompt="just one").json()
    (choice,) = data["choices"]
    assert (choice["text"], choice["finish_reason"]) == expected_completion("just one")[:2]


def test_n_choices_are_prompt_major(sim, http):
    prompts = PROMPTS[:5]
    data = complete(http, sim.urls[0], prompt=prompts, n=3, max_tokens=6).json()
    assert len(data["choices"]) == 15
    for choice in data["choices"]:
        i, j = divmod(choice["index"], 3)
        assert choice["text"] == expected_completion(prompts[i], j=j, max_tokens=6)[0]
    assert data["usage"]["prompt_tokens"] == sum(count_tokens(p) for p in prompts)


def test_shuffled_choices_are_placed_by_index(http):
    with run_in_thread(SimConfig(time_scale=0, shuffle_choices=True)) as shuffled:
        data = complete(http, shuffled.urls[0], prompt=PROMPTS, n=2, max_tokens=5).json()
    indices = [c["index"] for c in data["choices"]]
    assert indices != sorted(indices) and sorted(indices) == list(range(2 * len(PROMPTS)))
    for choice in data["choices"]:
        i, j = divmod(choice["index"], 2)
        assert choice["text"] == expected_completion(PROMPTS[i], j=j, max_tokens=5)[0]


def test_stop_and_finish_reasons_over_http(sim, http):
    stop = ["the", "of"]
    data = complete(http, sim.urls[0], prompt=PROMPTS, max_tokens=20, stop=stop).json()
    for choice in data["choices"]:
        text, finish, _ = expected_completion(PROMPTS[choice["index"]], max_tokens=20, stop=stop)
        assert (choice["text"], choice["finish_reason"]) == (text, finish)
        assert "the" not in choice["text"] and "of" not in choice["text"]


def test_over_long_prompt_fails_the_whole_list_with_older_vllms_check(http):
    """``--context-check total --error-shape flat``: older vLLM, prompt + max_tokens must fit."""
    config = SimConfig(time_scale=0, max_model_len=512, context_check="total", error_shape="flat")
    with run_in_thread(config) as sim:
        long_prompt = "x" * 4 * 600  # 600 tokens > max_model_len 512
        r = complete(http, sim.urls[0], prompt=["short", long_prompt, "short"], max_tokens=10)
        body = assert_vllm_error(r, 400, flat=True)
        assert body["type"] == "BadRequestError" and body["param"] is None
        assert body["message"] == (
            "This model's maximum context length is 512 tokens. However, you requested 610 tokens "
            "(600 in the messages, 10 in the completion). Please reduce the length of the messages "
            "or completion.")
        r = complete(http, sim.urls[0], prompt=["x" * 4 * 500], max_tokens=13)  # 513 > 512
        assert_vllm_error(r, 400, "maximum context length is 512", flat=True)
        assert complete(http, sim.urls[0], prompt=["x" * 4 * 500], max_tokens=12).status_code == 200
        assert sim.stats(0)["http_requests"] == 3


@pytest.mark.parametrize("content, message_part", [
    (b"{not json", "Invalid JSON"),
    (json.dumps({"max_tokens": 4}).encode(), "Either prompt or prompt_embeds must be provided and non-empty."),
    (json.dumps({"prompt": ""}).encode(), "Either prompt or prompt_embeds must be provided and non-empty."),
    (json.dumps({"prompt": [[1, 2, 3]]}).encode(), "Token-id"),
    (json.dumps({"prompt": "a", "n": 0}).encode(), "n must be"),
    (json.dumps({"prompt": "a", "max_tokens": "many"}).encode(), "max_tokens"),
    (json.dumps({"prompt": "a", "stream": True}).encode(), "stream"),
    (json.dumps(["prompt"]).encode(), "JSON object"),
])
def test_bad_requests_get_vllm_shaped_400(sim, http, content, message_part):
    r = http.post(sim.urls[0] + "/completions", content=content,
                  headers={"Content-Type": "application/json"})
    assert_vllm_error(r, 400, message_part)


def test_chat_completions(sim, http):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour. ünïcode"}]
    r = http.post(sim.urls[0] + "/chat/completions",
                  json={"model": "tiny", "messages": messages, "n": 2, "max_tokens": 7, "seed": 5})
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    prompt = chat_prompt(messages)
    for choice in data["choices"]:
        text, finish, _ = expected_completion(prompt, seed=5, j=choice["index"], max_tokens=7)
        assert choice["message"] == {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                                     "audio": None, "function_call": None, "reasoning": None}
        assert choice["finish_reason"] == finish
    assert sorted(c["index"] for c in data["choices"]) == [0, 1]
    assert data["usage"]["prompt_tokens"] == count_tokens(prompt)
    # Without max_tokens the answer runs to its natural end, as vLLM uses the free context.
    data = http.post(sim.urls[0] + "/chat/completions", json={"messages": messages}).json()
    assert data["choices"][0]["message"]["content"] == expected_completion(prompt, max_tokens=None)[0]
    r = http.post(sim.urls[0] + "/chat/completions", json={"messages": "hello"})
    assert_vllm_error(r, 400, "messages")


@pytest.mark.parametrize("mode, field", [("split", "reasoning_content"), ("only", "reasoning")])
def test_chat_answers_of_a_reasoning_model(http, mode, field):
    messages = [{"role": "user", "content": "Think first. ☃"}]
    config = SimConfig(time_scale=0, reasoning=mode, reasoning_field=field, advertise_max_model_len=False)
    with run_in_thread(config) as s:
        data = http.post(s.urls[0] + "/chat/completions",
                         json={"messages": messages, "max_tokens": 30, "n": 2, "seed": 4}).json()
        completion = http.post(s.urls[0] + "/completions", json={"prompt": "Think first.", "max_tokens": 5}).json()
        card = http.get(s.urls[0] + "/models").json()["data"][0]
    for choice in data["choices"]:
        text, _, _ = expected_completion(chat_prompt(messages), seed=4, j=choice["index"], max_tokens=30)
        words = text.split(" ")
        if mode == "split":
            half = (len(words) + 1) // 2
            expected = {"role": "assistant", "content": " ".join(words[half:]) or None,
                        field: " ".join(words[:half])}
        else:
            expected = {"role": "assistant", "content": None, field: text}
        expected.update(refusal=None, annotations=None, audio=None, function_call=None)
        assert choice["message"] == expected
    # /v1/completions has no reasoning parser in vLLM: plain text
    assert set(completion["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason",
                                             "token_ids", "prompt_logprobs", "prompt_token_ids", "routed_experts"}
    assert "max_model_len" not in card


def test_models_and_health(sim, http):
    data = http.get(sim.urls[0] + "/models").json()
    assert data["object"] == "list"
    (card,) = data["data"]
    assert (card["id"], card["object"], card["owned_by"], card["max_model_len"], card["root"], card["parent"]) == (
        "tiny", "model", "vllm", 512, "tiny", None)
    r = http.get(root(sim.urls[0]) + "/health")
    assert r.status_code == 200 and r.content == b""


def test_metrics_counters_move(sim, http):
    def scrape():
        r = http.get(root(sim.urls[0]) + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return parse_metrics(r.text)

    before = scrape()
    prompts = PROMPTS[:4]
    data = complete(http, sim.urls[0], prompt=prompts, max_tokens=5).json()
    after = scrape()
    lb = {"model_name": "tiny"}

    def delta(name, **labels):
        return metric(after, name, **lb, **labels) - metric(before, name, **lb, **labels)

    assert delta("mpiswarm_sim:http_requests_total") == 1
    assert delta("vllm:prompt_tokens_total") == data["usage"]["prompt_tokens"]
    assert delta("vllm:generation_tokens_total") == data["usage"]["completion_tokens"]
    successes = sum(delta("vllm:request_success_total", finished_reason=r) for r in ("stop", "length"))
    assert successes == 4
    for hist in ("vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds"):
        assert delta(hist + "_count") == 4
        assert metric(after, hist + "_bucket", le="+Inf", **lb) == metric(after, hist + "_count", **lb)
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert metric(after, gauge, **lb) == 0
    assert metric(after, "vllm:num_preemptions_total", **lb) == 0


# -------------------------------------------------------------------------- faults


def fault_config(**kw) -> SimConfig:
    return SimConfig(time_scale=0, error_rate=1.0, **kw)


@pytest.mark.parametrize("kind, status, err_type", [
    ("500", 500, "InternalServerError"),
    ("503", 503, "ServiceUnavailableError"),
    ("429", 429, "RateLimitError"),
])
def test_http_error_faults(http, kind, status, err_type):
    with run_in_thread(fault_config(error_kinds=(kind,))) as s:
        r = complete(http, s.urls[0], prompt="a")
        assert assert_vllm_error(r, status)["type"] == err_type
        r = http.post(s.urls[0] + "/chat/completions",
                      json={"messages": [{"role": "user", "content": "a"}]})
        assert r.status_code == status
        assert http.get(root(s.urls[0]) + "/health").status_code == 200
        assert s.stats(0)["faults"] == {kind: 2}


def test_drop_fault_closes_the_connection(http):
    with run_in_thread(fault_config(error_kinds=("drop",))) as s:
        for _ in range(2):
            with pytest.raises(httpx2.TransportError) as info:
                complete(http, s.urls[0], prompt="a")
            assert not isinstance(info.value, httpx2.TimeoutException)
        assert s.stats(0)["faults"] == {"drop": 2}


def test_timeout_fault_holds_until_client_gives_up_and_never_blocks_shutdown(http):
    with run_in_thread(fault_config(error_kinds=("timeout",))) as s:
        with pytest.raises(httpx2.ReadTimeout):
            http.post(s.urls[0] + "/completions", json={"prompt": "a"}, timeout=0.3)
        # A call still held when the server stops is dropped, and the stop is prompt.
        outcome = {}

        def held_call():
            try:
                http.post(s.urls[0] + "/completions", json={"prompt": "b"}, timeout=30)
            except httpx2.TransportError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=held_call)
        caller.start()
        wait_until(lambda: s.stats(0)["faults"].get("timeout") == 2)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0
    caller.join(5)
    assert not caller.is_alive()
    assert not isinstance(outcome["error"], httpx2.TimeoutException)


def test_crash_after(http):
    with run_in_thread(SimConfig(time_scale=0, crash_after=2)) as s:
        health = root(s.urls[0]) + "/health"
        assert complete(http, s.urls[0], prompt="a").status_code == 200
        assert http.get(health).status_code == 200
        assert complete(http, s.urls[0], prompt="b").status_code == 200
        assert http.get(health).status_code == 503
        for _ in range(2):
            with pytest.raises(httpx2.TransportError):
                complete(http, s.urls[0], prompt="c")
        stats = s.stats(0)
        assert (stats["http_requests"], stats["responses_ok"], stats["dropped_crashed"]) == (4, 2, 2)
        assert not stats["healthy"]


def test_slow_start_turns_healthy(http):
    with run_in_thread(SimConfig(time_scale=0, slow_start=0.4)) as s:
        t0 = time.monotonic()
        health = root(s.urls[0]) + "/health"
        assert http.get(health).status_code == 503
        assert_vllm_error(complete(http, s.urls[0], prompt="a"), 503)
        wait_until(lambda: http.get(health).status_code == 200)
        assert time.monotonic() - t0 >= 0.3
        assert complete(http, s.urls[0], prompt="a").status_code == 200
        assert s.stats(0)["rejected_starting"] == 1


def test_faults_are_reproducible_and_restricted_to_chosen_endpoints(http):
    config = SimConfig(time_scale=0, error_rate=0.5, error_kinds=("500", "503", "429"),
                       fault_seed=11, fault_endpoints=(1,))
    runs = []
    for _ in range(2):
        with run_in_thread(config, count=2) as s:
            runs.append([complete(http, s.urls[1], prompt="a").status_code for _ in range(24)])
            assert all(complete(http, s.urls[0], prompt="a").status_code == 200 for _ in range(5))
    assert runs[0] == runs[1]
    assert 200 in runs[0] and {500, 503, 429} & set(runs[0])


def test_jitter_delays_calls_and_keeps_answers_right():
    config = SimConfig(time_scale=0, jitter=0.3, fault_seed=3)
    delays = [draw_fault(3, 0, call, 0.0, ("500",), 0.3).delay for call in range(1, 9)]

    async def run(url):
        async with httpx2.AsyncClient(trust_env=False, timeout=10) as client:
            async def one(i):
                r = await client.post(url + "/completions", json={"prompt": PROMPTS[i]})
                return i, r.json()["choices"][0]["text"], time.monotonic()
            return await asyncio.gather(*(one(i) for i in range(8)))

    with run_in_thread(config) as s:
        t0 = time.monotonic()
        results = asyncio.run(run(s.urls[0]))
    assert max(t for _, _, t in results) - t0 >= max(delays) * 0.9
    for i, text, _ in results:
        assert text == expected_completion(PROMPTS[i])[0]


# ---------------------------------------------------------------------- time model


async def _timed_calls(url: str, prompts: list[str], concurrent: bool, max_tokens: int) -> float:
    limits = httpx2.Limits(max_connections=len(prompts))
    async with httpx2.AsyncClient(trust_env=False, timeout=30, limits=limits) as client:
        async def one(p):
            r = await client.post(url + "/completions", json={"prompt": p, "max_tokens": max_tokens})
            assert r.json()["choices"][0]["text"] == expected_completion(p, max_tokens=max_tokens)[0]

        await one("warm-up")  # open one connection before timing
        t0 = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(one(p) for p in prompts))
        else:
            for p in prompts:
                await one(p)
        return time.perf_counter() - t0


def test_concurrent_requests_are_batched():
    prompts = [f"batch me {i}" for i in range(64)]
    with run_in_thread(SimConfig(time_scale=0.5)) as s:
        sequential = asyncio.run(_timed_calls(s.urls[0], prompts, False, 4))
        concurrent = asyncio.run(_timed_calls(s.urls[0], prompts, True, 4))
        assert s.stats(0)["max_running"] > 8
    assert concurrent < sequential / 3, (concurrent, sequential)


def _long_prompts(k: int, max_tokens: int) -> list[str]:
    """Prompts whose answers all run to ``max_tokens`` (so timings are comparable)."""
    out, i = [], 0
    while len(out) < k:
        p = f"long answer {i}"
        if expected_completion(p, max_tokens=max_tokens)[1] == "length":
            out.append(p)
        i += 1
    return out


def test_speed_scales_throughput(http):
    prompts = _long_prompts(32, 16)
    with run_in_thread(SimConfig(time_scale=1.0, speeds=(1.0, 0.25)), count=2) as s:
        times = []
        for url in s.urls:
            t0 = time.perf_counter()
            assert complete(http, url, prompt=prompts, max_tokens=16).status_code == 200
            times.append(time.perf_counter() - t0)
    ratio = times[1] / times[0]
    assert 2.5 < ratio < 6.0, times


def test_sequences_beyond_max_num_seqs_queue(http):
    with run_in_thread(SimConfig(time_scale=1.0, max_num_seqs=4)) as s:
        times = []
        for k in (4, 16):
            t0 = time.perf_counter()
            r = complete(http, s.urls[0], prompt=_long_prompts(k, 8), max_tokens=8)
            assert r.status_code == 200
            times.append(time.perf_counter() - t0)
        assert s.stats(0)["max_running"] == 4
    assert 2.5 < times[1] / times[0] < 6.0, times


def test_client_giving_up_aborts_its_sequences(http):
    with run_in_thread(SimConfig(time_scale=5.0, max_num_seqs=2)) as s:
        with pytest.raises(httpx2.ReadTimeout):
            http.post(s.urls[0] + "/completions", timeout=0.2,
                      json={"prompt": _long_prompts(6, 16), "max_tokens": 16})
        wait_until(lambda: (s.stats(0)["running"], s.stats(0)["waiting"]) == (0, 0))


# ----------------------------------------------------------------------- processes


def test_process_with_three_endpoints(tmp_path, http):
    ready = tmp_path / "urls.txt"
    with start_process(["--count", "3", "--time-scale", "0", "--model", "m3", "--max-prompts-per-call", "0",
                        "--ready-file", str(ready)]) as proc:
        assert len(proc.urls) == 3
        assert proc.ports == [proc.ports[0] + i for i in range(3)]
        assert ready.read_text().split() == proc.urls
        for url in proc.urls:
            assert http.get(url + "/models").json()["data"][0]["id"] == "m3"
        data = complete(http, proc.urls[2], prompt=PROMPTS, max_tokens=9).json()
        assert [c["text"] for c in data["choices"]] == [
            expected_completion(p, max_tokens=9)[0] for p in PROMPTS]
        if Path(f"/proc/{proc.pid}/stat").exists():  # CPU cost of a 10,000-prompt list
            prompts = [f"Prompt {i}: summarise item {i} of the catalogue." for i in range(10_000)]
            cpu0 = cpu_seconds(proc.pid)
            r = complete(http, proc.urls[0], prompt=prompts, max_tokens=16)  # --max-prompts-per-call 0
            cpu = cpu_seconds(proc.pid) - cpu0
            assert r.status_code == 200 and len(r.json()["choices"]) == 10_000
            assert cpu < 1.0, f"{cpu:.2f} s of CPU for 10,000 prompts"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.proc.wait(10) == 0
        assert proc.stop() == 0
    with pytest.raises(httpx2.ConnectError):
        http.get(root(proc.urls[0]) + "/health")


def test_process_port_conflicts(monkeypatch, http):
    import mpiswarm.sim.process as process

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # An explicit --port that is taken is reported (status 98 = address in use) ...
        with pytest.raises(RuntimeError, match="status 98"):
            start_process(["--port", str(port), "--time-scale", "0"], timeout=20)
        # ... while a port block chosen by start_process is retried on a new block.
        blocks = iter([port, find_free_port_block(2)])
        monkeypatch.setattr(process, "find_free_port_block", lambda k: next(blocks))
        with start_process(["--count", "2", "--time-scale", "0"], timeout=20) as proc:
            assert proc.ports[0] != port and len(proc.ports) == 2
            assert http.get(root(proc.urls[1]) + "/health").status_code == 200


def test_find_free_port_block():
    base = find_free_port_block(4)
    socks = [socket.socket() for _ in range(4)]
    try:
        for i, sock in enumerate(socks):
            sock.bind(("127.0.0.1", base + i))
    finally:
        for sock in socks:
            sock.close()


def test_process_on_any_free_port_exits_cleanly_on_sigint(http):
    proc = start_process(["--port", "0", "--time-scale", "0"])
    try:
        (url,) = proc.urls
        assert proc.ports[0] > 0
        assert http.get(root(url) + "/health").status_code == 200
        proc.proc.send_signal(signal.SIGINT)
        assert proc.proc.wait(10) == 0
    finally:
        proc.stop()


def test_a_simulator_process_ends_with_the_thread_that_started_it(tmp_path):
    """A test run killed (CI's timeout, Ctrl-C twice) leaves no simulator listening: the child
    gets SIGTERM from the kernel when the thread that started it dies (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    from mpiswarm.launch import is_running

    repo = Path(__file__).resolve().parents[2]
    starter = subprocess.Popen(
        [sys.executable, "-c", "import time; from mpiswarm.sim import start_process; "
         "sim = start_process(['--time-scale', '0']); print(sim.pid, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(repo)})
    sim_pid = None
    try:
        sim_pid = int(starter.stdout.readline())
        starter.kill()  # no cleanup of its own: only the kernel's signal can end the simulator
        starter.wait(10)
        deadline = time.monotonic() + 20
        while is_running(sim_pid):
            assert time.monotonic() < deadline, "the simulator outlived the process that started it"
            time.sleep(0.05)  # another process's exit: nothing to wait on
    finally:
        starter.kill()
        starter.communicate()
        if sim_pid is not None and is_running(sim_pid):  # the test failed: end what it started
            os.kill(sim_pid, signal.SIGKILL)


def test_openai_sdk_talks_to_the_simulator(sim):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=sim.urls[0], api_key="EMPTY", max_retries=0, timeout=10)
    r = client.completions.create(model="tiny", prompt=PROMPTS[:3], max_tokens=5, n=2)
    assert sorted((c.index, c.text) for c in r.choices) == [
        (i * 2 + j, expected_completion(PROMPTS[i], j=j, max_tokens=5)[0])
        for i in range(3) for j in range(2)]
    messages = [{"role": "user", "content": "hi"}]
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5)
    assert r.choices[0].message.content == expected_completion(chat_prompt(messages), max_tokens=5)[0]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model="tiny", prompt=["x" * 4000], max_tokens=5)
    assert [m.id for m in client.models.list()] == ["tiny"]


# ------------------------------------------------- vLLM 0.32's refusals and cards, by default


@pytest.mark.parametrize("extra, message, param", [
    ({"n": 2, "temperature": 0}, "n must be 1 when using greedy sampling, got 2.", None),
    ({"n": 3, "temperature": 0.0, "top_p": 0.5}, "n must be 1 when using greedy sampling, got 3.", None),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)", "top_p"),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5. (parameter=top_p, value=1.5)", "top_p"),
    ({"temperature": 2.5}, "temperature must be in [0, 2], got 2.5. (parameter=temperature, value=2.5)",
     "temperature"),
    ({"temperature": -1}, "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)",
     "temperature"),
    ({"max_tokens": 0}, "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", "max_tokens"),
    ({"n": 0}, "n must be at least 1, got 0.", None),
    ({"stop": ["a", ""]}, "stop cannot contain an empty string.", None),
])
def test_sampling_refused_as_vllm_refuses_it(sim, http, extra, message, param):
    """``vllm/sampling_params.py`` (vLLM 0.32) ``_verify_args`` and ``_verify_greedy_sampling``:
    400 BadRequestError with the str of its VLLMValidationError, on both routes."""
    for route, body in (("/completions", {"prompt": ["a", "b"]}),
                        ("/chat/completions", {"messages": [{"role": "user", "content": "a"}]})):
        r = http.post(sim.urls[0] + route, json={"model": "tiny", **body, **extra})
        error = assert_vllm_error(r, 400)
        assert (error["message"], error["type"], error["param"]) == (message, "BadRequestError", param)


def test_sampling_vllm_accepts(sim, http):
    # a temperature in (0, 0.01) is raised to 0.01 (not greedy); greedy with n = 1 is fine
    for extra in ({"n": 2, "temperature": 0.001}, {"n": 1, "temperature": 0}, {"n": 2, "temperature": 2},
                  {"top_p": 1}, {"n": 2}):
        assert complete(http, sim.urls[0], prompt=["a"], **extra).status_code == 200, extra


def test_unknown_model_is_404_and_adapters_are_served(http):
    config = SimConfig(time_scale=0, model="tiny", lora_modules=("tiny-sql",), max_model_len=300)
    with run_in_thread(config) as s:
        r = complete(http, s.urls[0], model="llama-wrong", prompt=["a"])
        error = assert_vllm_error(r, 404)
        assert error == {"message": "The model `llama-wrong` does not exist. Valid aliases: tiny.",
                         "type": "NotFoundError", "param": "model", "code": 404}
        r = http.post(s.urls[0] + "/chat/completions", json={"model": "x", "messages": [{"role": "user",
                                                                                          "content": "a"}]})
        assert_vllm_error(r, 404, "The model `x` does not exist.")
        data = complete(http, s.urls[0], model="tiny-sql", prompt=["a"]).json()
        assert data["model"] == "tiny-sql"
        assert complete(http, s.urls[0], prompt=["a"]).json()["model"] == "tiny"  # no model: the served one
        base, adapter = http.get(s.urls[0] + "/models").json()["data"]
        assert s.stats(0)["not_found"] == 2
    assert (base["id"], base["parent"], base["max_model_len"], base["owned_by"]) == ("tiny", None, 300, "vllm")
    assert (adapter["id"], adapter["parent"], adapter["max_model_len"], adapter["owned_by"]) == (
        "tiny-sql", "tiny", None, "vllm")
    assert set(base) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    with run_in_thread(SimConfig(time_scale=0, skip_model_name_validation=True)) as s:
        assert complete(http, s.urls[0], model="anything", prompt=["a"]).json()["model"] == "sim-model"


def test_prompt_lists_over_the_cap_are_400(http):
    """``CompletionRequest.validate_prompt_list_length`` (vLLM 0.32) with
    VLLM_MAX_COMPLETION_PROMPTS: 1024 by default; ``max_prompts_per_call=0``: no cap."""
    with run_in_thread(SimConfig(time_scale=0)) as s:
        assert complete(http, s.urls[0], prompt=["p"] * 1024, max_tokens=1).status_code == 200
        error = assert_vllm_error(complete(http, s.urls[0], prompt=["p"] * 3000, max_tokens=1), 400)
        assert error["message"] == (
            "prompt list length 3000 exceeds the maximum allowed count of 1024. To increase this limit, set "
            "the VLLM_MAX_COMPLETION_PROMPTS environment variable. (parameter=prompt)")
        assert (error["type"], error["param"]) == ("BadRequestError", "prompt")
    with run_in_thread(SimConfig(time_scale=0, max_prompts_per_call=5)) as s:
        assert_vllm_error(complete(http, s.urls[0], prompt=["p"] * 6), 400, "maximum allowed count of 5.")
    with run_in_thread(SimConfig(time_scale=0, max_prompts_per_call=0)) as s:
        assert complete(http, s.urls[0], prompt=["p"] * 3000, max_tokens=1).status_code == 200


def test_over_long_prompt_fails_the_whole_list_as_in_vllm_0_32(sim, http):
    """``vllm/renderers/params.py`` (0.32): the prompt alone must fit (a tokenizer truncating at
    max_model_len + 1 counts "at least" that), text past 4 characters a token fails before it is
    tokenized; max_tokens is clamped to what the context leaves (``get_max_tokens``)."""
    over = "é" * 2 * 600  # 600 tokens, 1200 characters: past the token bound only
    r = complete(http, sim.urls[0], prompt=["short", over, "short"], max_tokens=10)
    error = assert_vllm_error(r, 400)
    assert error["message"] == (
        "This model's maximum context length is 512 tokens. However, your prompt contains at least 513 input "
        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
        "prompt. (parameter=input_tokens, value=513)")
    assert (error["type"], error["param"]) == ("BadRequestError", "input_tokens")
    error = assert_vllm_error(complete(http, sim.urls[0], prompt=["x" * 2100]), 400)
    assert error["message"] == (
        "This model's maximum context length is 512 tokens. However, your prompt contains 2100 characters (more "
        "than 2048 characters, which is the upper bound for 512 input tokens). Please reduce the length of the "
        "input prompt. (parameter=input_text, value=2100)")
    # 500 prompt tokens + 13 > 512: clamped to 12, no error; a prompt of 512 tokens leaves 0
    data = complete(http, sim.urls[0], prompt=["x" * 4 * 500], max_tokens=13, seed=1).json()
    assert data["choices"][0]["text"] == expected_completion("x" * 4 * 500, seed=1, max_tokens=12)[0]
    assert_vllm_error(complete(http, sim.urls[0], prompt=["x" * 4 * 512]), 400,
                      "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)")


def test_nul_answers_and_the_reasoning_field(http):
    messages = [{"role": "user", "content": "nul please"}]
    with run_in_thread(SimConfig(time_scale=0, nul_answers=True, reasoning="split")) as s:
        data = complete(http, s.urls[0], prompt=PROMPTS, max_tokens=9).json()
        chat = http.post(s.urls[0] + "/chat/completions", json={"messages": messages, "max_tokens": 9}).json()
    for choice in data["choices"]:
        text = expected_completion(PROMPTS[choice["index"]], max_tokens=9, nul=True)[0]
        assert choice["text"] == text and "\x00" in text
        assert text.replace("\x00", " ", 1).rstrip(" ") == expected_completion(PROMPTS[choice["index"]],
                                                                              max_tokens=9)[0]
    message = chat["choices"][0]["message"]
    assert "reasoning_content" not in message and "\x00" in message["reasoning"] + (message["content"] or "")


def test_flat_error_shape_of_older_vllm(http):
    with run_in_thread(SimConfig(time_scale=0, error_shape="flat")) as s:
        body = assert_vllm_error(complete(http, s.urls[0], model="nope", prompt=["a"]), 404, flat=True)
    assert body["type"] == "NotFoundError" and body["param"] == "model"


def test_version_flags_on_the_command_line():
    from mpiswarm.sim.__main__ import build_parser, config_from_args

    ns = build_parser().parse_args(["--error-shape", "flat", "--max-prompts-per-call", "0", "--context-check",
                                    "total", "--reasoning-field", "reasoning_content", "--lora", "a", "--lora", "b",
                                    "--nul-answers", "--skip-model-name-validation"])
    c = config_from_args(ns)
    assert (c.error_shape, c.max_prompts_per_call, c.context_check, c.reasoning_field, c.lora_modules,
            c.nul_answers, c.skip_model_name_validation) == ("flat", 0, "total", "reasoning_content", ("a", "b"),
                                                             True, True)
    d = config_from_args(build_parser().parse_args([]))
    assert (d.error_shape, d.max_prompts_per_call, d.context_check, d.reasoning_field) == (
        "nested", 1024, "prompt", "reasoning")


def test_structured_outputs_and_logprobs_as_vllm_shapes_them():
    """A choice row answers one of its choices, a JSON-schema row a document valid for its
    schema, json_object an object; logprobs the same alone as in a list."""
    import urllib.request

    from mpiswarm.sim import expected_logprobs

    def post(url, body):
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    schema = {"type": "object", "properties": {"gene": {"type": "string"}, "score": {"type": "integer", "minimum": 1,
              "maximum": 5}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["gene", "score"]}
    with run_in_thread(SimConfig(time_scale=0)) as s:
        base = s.urls[0]
        got = post(base + "/completions", {"model": "sim-model", "prompt": ["p1", "p2", "p3"],
                                           "structured_outputs": {"choice": ["yes", "no", "maybe"]}})
        assert all(c["text"] in ("yes", "no", "maybe") and c["finish_reason"] == "stop" for c in got["choices"])
        got = post(base + "/chat/completions", {"model": "sim-model", "messages": [{"role": "user", "content": "x"}],
                                                "response_format": {"type": "json_schema",
                                                                    "json_schema": {"name": "g", "schema": schema}}})
        doc = json.loads(got["choices"][0]["message"]["content"])
        assert isinstance(doc["gene"], str) and 1 <= doc["score"] <= 5 and set(doc["tags"]) <= {"a", "b"}
        got = post(base + "/completions", {"model": "sim-model", "prompt": "x", "response_format": {"type": "json_object"}})
        assert isinstance(json.loads(got["choices"][0]["text"]), dict)
        one = post(base + "/completions", {"model": "sim-model", "prompt": "alpha", "max_tokens": 5, "logprobs": 3})
        listed = post(base + "/completions", {"model": "sim-model", "prompt": ["beta", "alpha"], "max_tokens": 5,
                                              "logprobs": 3})
        assert listed["choices"][1]["logprobs"] == one["choices"][0]["logprobs"] == expected_logprobs(
            one["choices"][0]["text"], False, 3, greedy=False)
        # sampled (temperature 1): vLLM gives the sampled token and the 3 most likely
        assert all(len(top) == 4 for top in one["choices"][0]["logprobs"]["top_logprobs"])
