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
    * ``/health`` answers 200 ``{"status": "ok"}`` once the model is loaded, 503
      while loading.
    * ``max_tokens: 0`` still generates one token (vLLM rejects it); no
      ``max_tokens`` generates until the slot's context is full.
    * Text-completion ids start with ``chatcmpl-`` (vLLM: ``cmpl-``); responses
      carry an extra ``timings`` object; ``echo`` is ignored; ``logprobs`` come
      in the chat format (``{"content": [{"token", "logprob", "top_logprobs",
      ...}]}``), not the legacy completions format.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tiny_gguf

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


def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """Send a JSON request; return (HTTP status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def complete(base_url: str, prompt: str | list[str], **params: Any) -> dict[str, Any]:
    """POST /v1/completions (greedy, 8 tokens unless overridden); assert HTTP 200."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, **params}
    status, payload = request("POST", base_url + "/completions", body)
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
    status, body = request("POST", llama_endpoints[0].root_url + "/tokenize", {
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
        assert request("GET", server.root_url + "/health") == (200, {"status": "ok"})


def test_models_card(llama_endpoints, tiny_model: Path) -> None:
    status, body = request("GET", llama_endpoints[0].base_url + "/models")
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


def test_request_model_name_is_ignored(llama_endpoints, tiny_model: Path) -> None:
    payload = complete(llama_endpoints[0].base_url, "Hello", model="no/such-model")
    assert payload["model"] == str(tiny_model)
    assert payload["object"] == "text_completion"
    assert payload["id"].startswith("chatcmpl-")


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
    status, payload = request("POST", base_url + "/completions", body)

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
    status, payload = request("POST", llama_endpoints[0].base_url + "/completions",
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


# --------------------------------------------------------------------------- chat


def test_chat_completion_applies_the_models_template(llama_endpoints) -> None:
    server = llama_endpoints[0]
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is the capital of France?"}]
    status, rendered = request("POST", server.root_url + "/apply-template", {"messages": messages})
    assert status == 200
    assert rendered["prompt"] == ("<|system|>\nBe brief.<|end|>\n"
                                  "<|user|>\nWhat is the capital of France?<|end|>\n"
                                  "<|assistant|>\n")

    status, chat = request("POST", server.base_url + "/chat/completions", {
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

    status, body = request("GET", group[1].base_url + "/models")
    assert status == 200 and body["data"][0]["meta"]["n_ctx"] == tiny_gguf.CONTEXT_LENGTH

    group[0].kill()  # a crashed endpoint; the other one keeps serving
    assert not group[0].is_running()
    assert request("GET", group[1].root_url + "/health") == (200, {"status": "ok"})

    group.stop()
    assert all(server.process.returncode is not None for server in group)
    assert f"listening on http://127.0.0.1:{group[1].port}" in group[1].log_path.read_text()
