"""Behaviour of the real engine (llama.cpp's llama-server) with the tiny test model.

These tests pin down what mpiswarm's real-engine tier relies on, and where
llama-server differs from vLLM.  Observed with llama-server built from the
llama-cpp-python 0.3.36 sdist (``--version``: 0.5.0-dev, build 1, commit 0c1e570),
started as the fixtures start it (``--parallel 4 --ctx-size 2048 --temp 0``):

Same as vLLM
    * ``/v1/completions`` with a list prompt returns one choice per prompt, in
      order, ``index`` 0..N-1, and each answer equals the answer to that prompt
      sent alone.  Greedy answers are repeatable, across calls and servers.
    * ``n`` is honoured: choices are flattened prompt-major,
      ``index = prompt_idx * n + j``.  At temperature 0 the n copies are equal.
    * ``stop`` strings end the text before the stop string (it is not included),
      ``finish_reason`` "stop"; hitting ``max_tokens`` gives "length".
    * ``seed`` with temperature > 0 makes sampling repeatable.

Different from vLLM
    * ``usage`` counts only the *first* choice of the response: for a list prompt
      (and for ``n`` > 1) ``prompt_tokens``/``completion_tokens`` are those of
      prompt 0, copy 0 (vLLM sums over all prompts and copies).  It also carries
      ``prompt_tokens_details.cached_tokens`` from slot KV reuse, even with
      ``--cache-ram 0``.
    * One prompt longer than a slot's context fails the whole list with HTTP 400
      and this body (vLLM: ``{"object": "error", "message": ..., "type":
      "BadRequestError", "code": 400}``)::

          {"error": {"code": 400,
                     "message": "request (601 tokens) exceeds the available context
                                 size (512 tokens), try increasing it",
                     "type": "exceed_context_size_error",
                     "n_prompt_tokens": 601, "n_ctx": 512}}

      Other bad requests (e.g. an empty prompt list) are also 400 inside
      ``{"error": {...}}``, with ``"type": "invalid_request_error"``.
    * A prompt that fits but leaves less room than ``max_tokens`` is *not*
      rejected (vLLM rejects prompt + max_tokens > max_model_len): generation
      just stops at the end of the slot's context, ``finish_reason`` "length".
    * The context is per slot: ``--ctx-size`` is split evenly over ``--parallel``
      slots (2048 / 4 = 512 here), and ``/v1/models`` reports that as
      ``meta.n_ctx``.
    * ``/v1/models`` cards have ``id`` = the model path, ``owned_by``
      "llamacpp", ``meta`` (``n_ctx``, ``n_ctx_train``, ``n_vocab``, ...) and no
      ``max_model_len``; the response also has an Ollama-style ``models`` list.
    * The request's ``model`` is ignored: any name is served, and the response's
      ``model`` is the loaded model's path (vLLM: 404 for an unknown name).
    * ``/health`` answers 200 ``{"status": "ok"}`` once the model is loaded.  While
      it loads, *every* route answers 503 ``{"error": {"message": "Loading model",
      "type": "unavailable_error", "code": 503}}`` (from the server's source; the
      tiny model loads in milliseconds, too fast to observe).
    * ``max_tokens: 0`` still generates one token (vLLM rejects it); no
      ``max_tokens`` generates until the slot's context is full.
    * Requests without ``seed`` use the server's ``--seed`` (1234 in the
      fixtures), so even sampled answers repeat from request to request (vLLM:
      random); ``seed: -1`` asks for a random seed.  Requests without
      ``temperature`` use the server's ``--temp`` (0 in the fixtures).
    * Streaming a list of N prompts first sends N-1 ``data: null`` events, then
      the chunks of all prompts interleaved (told apart by ``index``), then
      ``data: [DONE]``.
    * Text-completion ids start with ``chatcmpl-`` (vLLM: ``cmpl-``); responses
      carry an extra ``timings`` object; ``echo`` is ignored; ``logprobs`` come
      in the chat format (``{"content": [{"token", "logprob", "top_logprobs",
      ...}]}``), not the legacy completions format.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import socket
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mpiswarm.engines import llama_server, tiny_gguf
from mpiswarm.launch import processes

from ..engines_common import MODEL, request

TIMEOUT = 60.0
PROMPTS = [
    "The capital of France is",
    "Hello, world!",
    "Tell me a story about a dog.",
    "What is the answer to the question?",
    "Write a sentence about the sun and the moon.",
    "Explain how a computer works.",
    "The quick brown fox jumps over the lazy dog.",
    "Why is the sky blue?",
    "List three numbers.",
    "Please describe your house.",
    "Where is the school?",
    "Who was the first president of the United States?",
    "A cat and a dog",
    "Once upon a time there was a little house.",
    "The government of the city",
    "What time is it?",
    "Tell me about the war.",
    "Write about water, life and children.",
    "How many years have you been here?",
    "English is a language.",
]


def complete(base_url: str, prompt: str | list[str], **params: Any) -> dict[str, Any]:
    """POST /v1/completions (greedy, 8 tokens unless overridden); assert HTTP 200."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, **params}
    status, payload = request(base_url + "/completions", body)
    assert status == 200, payload
    return payload


def texts(payload: dict[str, Any]) -> list[str]:
    return [choice["text"] for choice in payload["choices"]]


def overlong_prompt() -> str:
    """A prompt of CONTEXT_LENGTH + 89 tokens (each "▁the" is one token, plus BOS)."""
    return " ".join(["the"] * (tiny_gguf.CONTEXT_LENGTH + 88))


# --------------------------------------------------------------------------- the model


def test_tiny_model_is_deterministic_small_and_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    first = tiny_gguf.write_tiny_model(tmp_path / "a.gguf", seed=0)
    elapsed = time.perf_counter() - started
    second = tiny_gguf.write_tiny_model(tmp_path / "b.gguf", seed=0)
    other = tiny_gguf.write_tiny_model(tmp_path / "c.gguf", seed=1)

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert elapsed < 1.0
    assert first.stat().st_size < 2_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]


def test_tiny_model_tokenizes_english_into_word_pieces(llama_endpoints) -> None:
    status, body = request(llama_endpoints[0].root_url + "/tokenize", {
        "content": "The quick brown fox jumps over the lazy dog. What is the capital of France?",
        "with_pieces": True,
    })
    assert status == 200
    assert [token["piece"] for token in body["tokens"]] == [
        " The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".",
        " What", " is", " the", " capital", " of", " France", "?",
    ]


# --------------------------------------------------------------------------- routes


def test_health_of_every_server(llama_endpoints) -> None:
    for server in llama_endpoints:
        assert request(server.root_url + "/health") == (200, {"status": "ok"})


def test_models_card(llama_endpoints, tiny_model: Path) -> None:
    status, body = request(llama_endpoints[0].base_url + "/models")
    assert status == 200
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == str(tiny_model)
    assert card["object"] == "model"
    assert card["owned_by"] == "llamacpp"
    assert "max_model_len" not in card
    assert card["meta"]["n_ctx"] == tiny_gguf.CONTEXT_LENGTH  # 2048 split over 4 slots
    assert card["meta"]["n_ctx_train"] == tiny_gguf.CONTEXT_LENGTH
    assert card["meta"]["n_vocab"] == len(tiny_gguf.build_vocab()[0])
    assert [entry["model"] for entry in body["models"]] == [str(tiny_model)]  # Ollama-style


def test_request_model_name_is_ignored(llama_endpoints, tiny_model: Path) -> None:
    payload = complete(llama_endpoints[0].base_url, "Hello", model="no/such-model")
    assert payload["model"] == str(tiny_model)
    assert payload["object"] == "text_completion"
    assert payload["id"].startswith("chatcmpl-")
    assert "timings" in payload


# --------------------------------------------------------------------------- list prompts


def test_list_prompt_gives_one_choice_per_prompt_equal_to_single_answers(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    payload = complete(base_url, PROMPTS)

    assert [choice["index"] for choice in payload["choices"]] == list(range(len(PROMPTS)))
    assert all(choice["finish_reason"] == "length" for choice in payload["choices"])
    answers = texts(payload)
    assert all(answer.strip() for answer in answers)
    assert len(set(answers)) >= len(PROMPTS) // 2, "answers should depend on the prompt"
    singles = [texts(complete(base_url, prompt))[0] for prompt in PROMPTS]
    assert answers == singles


def test_answers_are_repeatable_across_calls_and_servers(llama_endpoints) -> None:
    first = texts(complete(llama_endpoints[0].base_url, PROMPTS))
    with ThreadPoolExecutor(max_workers=len(llama_endpoints)) as pool:
        concurrent = list(pool.map(lambda url: texts(complete(url, PROMPTS)),
                                   llama_endpoints.base_urls))
    assert concurrent == [first] * len(llama_endpoints)


def test_usage_counts_only_the_first_prompt(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    prompts = ["Hello", "Tell me a story about a dog and a cat."]
    single = [complete(base_url, prompt, max_tokens=5)["usage"] for prompt in prompts]
    assert single[0]["prompt_tokens"] != single[1]["prompt_tokens"]

    usage = complete(base_url, prompts, max_tokens=5)["usage"]
    assert usage["prompt_tokens"] == single[0]["prompt_tokens"]  # vLLM: the sum
    assert usage["completion_tokens"] == 5  # vLLM: 10
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]


def test_n_flattens_choices_prompt_major(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    prompts = ["Hello", "The dog", "Why is the sky blue?"]
    singles = [texts(complete(base_url, prompt, max_tokens=4))[0] for prompt in prompts]

    payload = complete(base_url, prompts, max_tokens=4, n=2)
    assert [choice["index"] for choice in payload["choices"]] == list(range(6))
    assert texts(payload) == [answer for answer in singles for _ in range(2)]
    assert payload["usage"]["completion_tokens"] == 4  # first choice only

    sampled = texts(complete(base_url, prompts, max_tokens=4, n=2, temperature=1.0, seed=5))
    assert len(sampled) == 6
    assert any(sampled[2 * p] != sampled[2 * p + 1] for p in range(len(prompts)))


# --------------------------------------------------------------------------- errors, limits


def test_overlong_prompt_fails_the_whole_list(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    body = {"model": "tiny", "prompt": ["Hello", overlong_prompt(), "The dog"],
            "max_tokens": 4, "temperature": 0}
    status, payload = request(base_url + "/completions", body)

    assert status == 400
    n_prompt = tiny_gguf.CONTEXT_LENGTH + 89
    assert payload == {"error": {
        "code": 400,
        "message": f"request ({n_prompt} tokens) exceeds the available context size "
                   f"({tiny_gguf.CONTEXT_LENGTH} tokens), try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": n_prompt,
        "n_ctx": tiny_gguf.CONTEXT_LENGTH,
    }}
    # The server is fine afterwards, and the other prompts alone still work.
    assert len(complete(base_url, ["Hello", "The dog"], max_tokens=4)["choices"]) == 2


def test_other_bad_requests_are_400_invalid_request_error(llama_endpoints) -> None:
    status, payload = request(llama_endpoints[0].base_url + "/completions",
                              {"model": "tiny", "prompt": [], "max_tokens": 4})
    assert status == 400
    assert payload["error"]["code"] == 400
    assert payload["error"]["type"] == "invalid_request_error"


def test_generation_stops_at_the_end_of_the_context(llama_endpoints) -> None:
    context = tiny_gguf.CONTEXT_LENGTH
    prompt = " ".join(["the"] * (context - 4))  # BOS + context-4 words: 3 tokens of room
    payload = complete(llama_endpoints[0].base_url, prompt, max_tokens=20)
    usage = payload["usage"]
    assert usage["prompt_tokens"] == context - 3
    assert usage["completion_tokens"] == 3  # not 20, and not an error as in vLLM
    assert payload["choices"][0]["finish_reason"] == "length"


# --------------------------------------------------------------------------- sampling params


def test_max_tokens(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    for max_tokens in (1, 5, 17):
        payload = complete(base_url, "Tell me about the war.", max_tokens=max_tokens)
        assert payload["usage"]["completion_tokens"] == max_tokens
        assert payload["choices"][0]["finish_reason"] == "length"
    zero = complete(base_url, "Tell me about the war.", max_tokens=0)
    assert zero["usage"]["completion_tokens"] == 1  # vLLM rejects max_tokens=0

    status, unbounded = request(base_url + "/completions",
                                {"prompt": "Tell me about the war.", "temperature": 0})
    assert status == 200
    usage = unbounded["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == tiny_gguf.CONTEXT_LENGTH
    assert unbounded["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_text_before_it(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    prompt = "Once upon a time there was a little house."
    full = texts(complete(base_url, prompt, max_tokens=12))[0]
    words = full.split(" ")
    assert len(words) > 4, full
    stop = " " + words[3]  # a word of the answer, with its leading space
    cut = full[: full.index(stop)]

    payload = complete(base_url, prompt, max_tokens=12, stop=[stop])
    assert texts(payload) == [cut]
    assert payload["choices"][0]["finish_reason"] == "stop"


def test_seed_makes_sampling_repeatable(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    params = {"max_tokens": 8, "temperature": 1.0}
    a = texts(complete(base_url, PROMPTS[:4], seed=7, **params))
    b = texts(complete(base_url, PROMPTS[:4], seed=7, **params))
    assert a == b
    others = {tuple(texts(complete(base_url, PROMPTS[:4], seed=s, **params))) for s in (8, 9, 10)}
    assert others != {tuple(a)}


def test_without_seed_the_servers_seed_is_used(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    params = {"max_tokens": 8, "temperature": 1.0}
    unseeded = [texts(complete(base_url, PROMPTS[:4], **params)) for _ in range(2)]
    server_seed = int(llama_endpoints[0].argv[llama_endpoints[0].argv.index("--seed") + 1])
    assert unseeded[0] == unseeded[1] == texts(complete(base_url, PROMPTS[:4], seed=server_seed,
                                                        **params))
    greedy = texts(complete(base_url, PROMPTS[:4]))
    status, default_temp = request(base_url + "/completions",
                                   {"prompt": PROMPTS[:4], "max_tokens": 8})
    assert status == 200 and texts(default_temp) == greedy  # the server's --temp 0


def test_streaming_a_list_prompt(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    prompts = PROMPTS[:3]
    expected = texts(complete(base_url, prompts, max_tokens=4))
    body = json.dumps({"model": "tiny", "prompt": prompts, "max_tokens": 4,
                       "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(base_url + "/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
        events = [line[len(b"data: "):].decode() for line in response.read().splitlines()
                  if line.startswith(b"data: ")]
    # One "null" event for every prompt after the first, before any chunk.
    nulls = len(prompts) - 1
    assert events[:nulls] == ["null"] * nulls
    assert events[-1] == "[DONE]"
    streamed = [""] * len(prompts)
    for event in events[nulls:-1]:
        for choice in json.loads(event)["choices"]:
            streamed[choice["index"]] += choice["text"]
    assert streamed == expected


def test_echo_is_ignored_and_logprobs_use_the_chat_format(llama_endpoints) -> None:
    base_url = llama_endpoints[0].base_url
    plain = texts(complete(base_url, "Hello", max_tokens=3))
    assert texts(complete(base_url, "Hello", max_tokens=3, echo=True)) == plain

    [choice] = complete(base_url, "Hello", max_tokens=3, logprobs=2)["choices"]
    entries = choice["logprobs"]["content"]  # legacy format: tokens, token_logprobs, ...
    assert "".join(entry["token"] for entry in entries) == plain[0]
    for entry in entries:
        assert entry["logprob"] <= 0
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy


# --------------------------------------------------------------------------- chat


def test_chat_completion_applies_the_models_template(llama_endpoints) -> None:
    server = llama_endpoints[0]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    status, rendered = request(server.root_url + "/apply-template", {"messages": messages})
    assert status == 200
    assert rendered["prompt"] == ("<|system|>\nBe brief.<|end|>\n"
                                  "<|user|>\nWhat is the capital of France?<|end|>\n"
                                  "<|assistant|>\n")

    status, chat = request(server.base_url + "/chat/completions", {
        "model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200, chat
    assert chat["object"] == "chat.completion"
    [choice] = chat["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length"
    # Same tokens as the rendered prompt sent as a plain completion.
    assert choice["message"]["content"] == texts(complete(server.base_url, rendered["prompt"]))[0]


# --------------------------------------------------------------------------- the fixtures


def test_factory_starts_servers_on_consecutive_ports_and_stops_them(llama_servers) -> None:
    group = llama_servers(2, slots=2)
    assert group.ports == [group.base_port, group.base_port + 1]
    assert group.base_urls == [group.endpoint_template.format(port=port) for port in group.ports]
    assert all(server.argv[server.argv.index("--host") + 1] == "127.0.0.1" for server in group)

    status, body = request(group[1].base_url + "/models")
    assert status == 200 and body["data"][0]["meta"]["n_ctx"] == tiny_gguf.CONTEXT_LENGTH

    group[0].kill()  # a crashed endpoint; the other one keeps serving
    assert not group[0].is_running()
    assert request(group[1].root_url + "/health") == (200, {"status": "ok"})

    group.stop()
    assert all(server.process.returncode is not None for server in group)
    assert f"listening on http://127.0.0.1:{group[1].port}" in group[1].log_path.read_text()


def _children() -> set[int]:
    """PIDs of this process's child processes, zombies included."""
    return {pid for pid, fields in processes().items() if int(fields[1]) == os.getpid()}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_failed_startup_stops_the_servers_already_started(llama_servers, llama_endpoints,
                                                          monkeypatch) -> None:
    conftest = sys.modules[llama_servers.__module__]
    real_argv = conftest.server_argv

    real_block = conftest.find_free_port_block
    blocks: list[int] = []

    def record_block(count, *args, **kwargs):
        blocks.append(real_block(count, *args, **kwargs))
        return blocks[-1]

    def second_one_broken(binary, model, port, **options):
        argv = real_argv(binary, model, port, **options)
        return argv + ["--no-such-flag"] if port == blocks[-1] + 1 else argv

    monkeypatch.setattr(conftest, "server_argv", second_one_broken)
    monkeypatch.setattr(conftest, "find_free_port_block", record_block)
    before = _children()
    with pytest.raises(conftest.StartupError, match="exited with status") as info:
        llama_servers(3)
    assert len(blocks) == 1 and info.value.server.port == blocks[0] + 1
    assert "--no-such-flag" in info.value.server.log_tail()
    assert _children() == before  # servers 0 and 2 were stopped and reaped


def test_a_port_lost_to_another_process_is_retried_elsewhere(llama_servers, monkeypatch) -> None:
    conftest = sys.modules[llama_servers.__module__]
    real_block = conftest.find_free_port_block
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offered: list[int] = []

        def taken_first(count, *args, **kwargs):
            offered.append(taken if not offered else real_block(count, *args, **kwargs))
            return offered[-1]

        monkeypatch.setattr(conftest, "find_free_port_block", taken_first)
        group = llama_servers(1)
    assert offered[0] == taken and len(offered) == 2
    assert group.base_port == offered[1]
    assert request(group[0].root_url + "/health") == (200, {"status": "ok"})


# --------------------------------------------------------------------------- the build tool


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty MPISWARM_CACHE, with LLAMA_SERVER unset."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MPISWARM_CACHE", str(cache))
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    return cache


def test_llama_server_env_overrides_the_cache(llama_server_bin: Path, empty_cache: Path,
                                              monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_SERVER", str(llama_server_bin))
    assert llama_server.ensure_llama_server(log=pytest.fail) == llama_server_bin.resolve()
    not_executable = tmp_path / "llama-server"
    not_executable.write_text("")
    monkeypatch.setenv("LLAMA_SERVER", str(not_executable))
    with pytest.raises(llama_server.LlamaServerBuildError, match="not an executable file"):
        llama_server.ensure_llama_server(log=pytest.fail)
    assert not empty_cache.exists()


def test_cache_path_and_missing_toolchain(empty_cache: Path, monkeypatch, tmp_path: Path) -> None:
    assert llama_server.cached_binary_path() == (
        empty_cache / f"llama-server-{llama_server.LLAMA_CPP_PYTHON_VERSION}" / "llama-server")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(llama_server.MissingToolchainError) as info:
        llama_server.ensure_llama_server(log=pytest.fail)
    assert info.value.missing == ("cmake", "a C compiler (cc/gcc/clang)",
                                  "a C++ compiler (c++/g++/clang++)")
    assert not empty_cache.exists()


@pytest.mark.skipif(bool(llama_server.missing_build_tools()), reason="needs cmake and compilers")
def test_a_failed_build_step_is_named_and_installs_nothing(empty_cache: Path,
                                                           monkeypatch) -> None:
    def broken_sdist(builder, dest: Path) -> Path:
        dest.mkdir()
        sdist = dest / "llama_cpp_python-0.3.36.tar.gz"
        cmakelists = b"cmake_minimum_required(VERSION 3.14)\nproject(broken NONE)\n" \
                     b'message(FATAL_ERROR "deliberately broken")\n'
        with tarfile.open(sdist, "w:gz") as archive:
            info = tarfile.TarInfo("llama_cpp_python-0.3.36/vendor/llama.cpp/CMakeLists.txt")
            info.size = len(cmakelists)
            archive.addfile(info, io.BytesIO(cmakelists))
        return sdist

    monkeypatch.setattr(llama_server, "_download_sdist", broken_sdist)
    lines: list[str] = []
    with pytest.raises(llama_server.LlamaServerBuildError) as info:
        llama_server.ensure_llama_server(log=lines.append, jobs=1)

    install_dir = llama_server.install_dir()
    message = str(info.value)
    assert "\n" not in message
    assert "step 'configure'" in message
    assert f"full log: {install_dir / 'build.log'}" in message
    assert "deliberately broken" in (install_dir / "build.log").read_text()
    assert any("deliberately broken" in line for line in lines)  # the log's tail is echoed
    assert sorted(p.name for p in install_dir.iterdir()) == [".build.lock", "build.log"]


def test_a_waiting_process_uses_the_binary_built_meanwhile(empty_cache: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setattr(llama_server, "missing_build_tools", lambda: [])
    monkeypatch.setattr(llama_server, "_build_and_install",
                        lambda *args: pytest.fail("built although another process had"))
    target = llama_server.cached_binary_path()
    target.parent.mkdir(parents=True)
    lines: list[str] = []
    result: list[Path] = []
    with open(target.parent / ".build.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is building
        waiter = threading.Thread(
            target=lambda: result.append(llama_server.ensure_llama_server(log=lines.append)))
        waiter.start()
        deadline = time.monotonic() + 10
        while not any("waiting" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiter.is_alive()
        target.write_bytes(b"#!/bin/sh\n")
        target.chmod(0o755)
        fcntl.flock(lock, fcntl.LOCK_UN)
    waiter.join(timeout=10)
    assert result == [target]
    assert any("built by another process" in line for line in lines)
