"""The simulator held to the real engine: the same requests to ``mpiswarm.sim`` and to vLLM's
own server, and the answers compared — status codes, the error JSON's shape (vLLM nests it:
``{"error": {"message", "type", "param", "code"}}``) and its message, field names and choice
indexing.  Texts differ (the simulator's answers are its own), shapes must not.

Messages are compared with their numbers masked: the simulator estimates token counts
(``count_tokens``) where vLLM tokenizes.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from mpiswarm.metrics import ENGINE_METRICS
from mpiswarm.sim import run_in_thread, SimConfig

from ..sim.test_request_options import REFUSED, USER, with_input
from .conftest import LORA_NAME
from .test_vllm_runs import MAX_MODEL_LEN, MODEL, request

#: (name, path, body or None for GET)
CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("list-with-n", "/v1/completions",
     {"model": MODEL, "prompt": ["one", "two words", "three words here"], "max_tokens": 4,
      "n": 2, "temperature": 0.8, "seed": 3}),
    ("single-prompt", "/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 3}),
    ("greedy-n2", "/v1/completions",
     {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 4, "n": 2, "temperature": 0}),
    ("unknown-model", "/v1/completions", {"model": "llama-wrong", "prompt": ["a"], "max_tokens": 4}),
    # 1,500 two-byte words: over max_model_len in vLLM's tokens and in the simulator's (4 bytes
    # a token), under both character bounds (vLLM checks characters first, by its tokenizer's
    # longest token), so both answer with the token-count message.
    ("overlong-prompt-in-a-list", "/v1/completions",
     {"model": MODEL, "prompt": ["short", " ".join(["ü"] * 1500)], "max_tokens": 4}),
    ("list-over-the-cap", "/v1/completions", {"model": MODEL, "prompt": ["a"] * 1025, "max_tokens": 1}),
    ("top-p-0", "/v1/completions", {"model": MODEL, "prompt": ["a"], "max_tokens": 4, "top_p": 0}),
    ("temperature-3", "/v1/completions", {"model": MODEL, "prompt": ["a"], "max_tokens": 4, "temperature": 3}),
    ("max-tokens-0", "/v1/completions", {"model": MODEL, "prompt": ["a"], "max_tokens": 0}),
    ("chat", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "hello"}], "max_tokens": 4}),
    ("chat-unknown-model", "/v1/chat/completions",
     {"model": "llama-wrong", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    ("chat-batch", "/v1/chat/completions/batch",
     {"model": MODEL, "messages": [[{"role": "user", "content": "hello"}],
                                   [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "yo"}]],
      "max_tokens": 4}),
    ("chat-batch-n2", "/v1/chat/completions/batch",
     {"model": MODEL, "messages": [[{"role": "user", "content": "hello"}]], "max_tokens": 4, "n": 2}),
    ("completions-logprobs", "/v1/completions",
     {"model": MODEL, "prompt": ["one", "two words"], "max_tokens": 3, "logprobs": 2, "temperature": 0}),
    ("completions-logprobs-0", "/v1/completions", {"model": MODEL, "prompt": "one", "max_tokens": 2, "logprobs": 0}),
    ("chat-logprobs", "/v1/chat/completions",
     {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "logprobs": True,
      "top_logprobs": 2}),
    ("chat-batch-logprobs", "/v1/chat/completions/batch",
     {"model": MODEL, "messages": [[{"role": "user", "content": "hello"}]], "max_tokens": 3, "logprobs": True}),
    ("completions-logprobs-sampled", "/v1/completions",
     {"model": MODEL, "prompt": "one", "max_tokens": 3, "logprobs": 2, "temperature": 0.8, "seed": 5}),
    ("chat-batch-no-conversation", "/v1/chat/completions/batch", {"model": MODEL, "messages": []}),
    ("chat-batch-empty-conversation", "/v1/chat/completions/batch", {"model": MODEL, "messages": [[]]}),
    ("chat-batch-flat-messages", "/v1/chat/completions/batch",
     {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
    ("chat-batch-unknown-model", "/v1/chat/completions/batch",
     {"model": "llama-wrong", "messages": [[{"role": "user", "content": "hi"}]]}),
    ("min-tokens-over-max-tokens", "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 3, "min_tokens": 4}),
    ("min-tokens-over-the-default", "/v1/completions", {"model": MODEL, "prompt": "a", "min_tokens": 17}),
    ("models", "/v1/models", None),
    ("tokenize", "/tokenize", {"model": MODEL, "prompt": "hello world"}),
    ("tokenize-unknown-model", "/tokenize", {"model": "llama-wrong", "prompt": "hello"}),
]


def mask(message: str) -> str:
    return re.sub(r"\d+(\.\d+)?", "#", message)


def keys(payload: Any) -> list[str]:
    return sorted(payload) if isinstance(payload, dict) else []


def shape(path: str, status: int, payload: Any) -> dict[str, Any]:
    """What must agree between the simulator and vLLM for one answer."""
    if status != 200:
        error = payload.get("error") if isinstance(payload, dict) else None
        assert isinstance(error, dict), f"{path} {status}: not vLLM's nested error: {payload!r}"
        return {"status": status, "keys": keys(payload), "error_keys": keys(error),
                "type": error.get("type"), "param": error.get("param"), "code": error.get("code"),
                "message": mask(str(error.get("message")))}
    out: dict[str, Any] = {"status": status, "keys": keys(payload)}
    if path == "/v1/models":
        out["object"] = payload["object"]
        out["card_keys"] = [keys(card) for card in payload["data"]]
        out["cards"] = [(card["id"], card["object"], card["owned_by"], card["parent"], card["max_model_len"])
                        for card in payload["data"]]
        return out
    if path == "/tokenize":
        out["max_model_len"] = payload["max_model_len"]
        return out
    out["object"] = payload["object"]
    out["indices"] = [choice["index"] for choice in payload["choices"]]
    out["choice_keys"] = sorted({key for choice in payload["choices"] for key in choice})
    out["usage_keys"] = keys(payload["usage"])
    # finish_reason is the model's doing (the tiny model never stops, the simulator's answers
    # do), so only its kind is compared.
    out["finish_kinds"] = all(choice["finish_reason"] in ("stop", "length") for choice in payload["choices"])
    out["logprobs"] = [logprobs_shape(choice.get("logprobs")) for choice in payload["choices"]]
    if path.startswith("/v1/chat/completions"):
        out["message_keys"] = sorted({key for choice in payload["choices"] for key in choice["message"]})
        out["roles"] = [choice["message"]["role"] for choice in payload["choices"]]
    return out


def logprobs_shape(logprobs: Any) -> Any:
    """A choice's logprobs as far as they must agree: the keys, the number of tokens and of
    alternatives a token (the texts and values are the model's)."""
    if logprobs is None:
        return None
    if "content" in logprobs:  # chat
        return {"keys": keys(logprobs), "entry_keys": sorted({k for e in logprobs["content"] for k in e}),
                "tokens": len(logprobs["content"]), "top": [len(e["top_logprobs"]) for e in logprobs["content"]]}
    return {"keys": keys(logprobs), "tokens": len(logprobs["tokens"]),
            "top": [len(t) for t in logprobs["top_logprobs"]], "offsets": len(logprobs["text_offset"])}


@pytest.fixture(scope="module")
def sim_root():
    """One simulated endpoint serving ``tiny`` with vLLM's context length, answering at once."""
    with run_in_thread(SimConfig(model=MODEL, max_model_len=MAX_MODEL_LEN, time_scale=0), count=1) as sim:
        yield sim.urls[0].removesuffix("/v1")


@pytest.mark.parametrize("name, path, body", CASES, ids=[case[0] for case in CASES])
def test_the_simulator_answers_as_vllm_does(vllm, sim_root: str, name: str, path: str,
                                            body: dict[str, Any] | None) -> None:
    real = shape(path, *request(vllm.root_url + path, body))
    simulated = shape(path, *request(sim_root + path, body))
    assert simulated == real


def test_health_and_the_metrics_mpiswarm_reads(vllm, sim_root: str) -> None:
    for root in (vllm.root_url, sim_root):
        status, _ = request(root + "/health")
        assert status == 200, root
        status, text = request(root + "/metrics")
        assert status == 200
        names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        missing = [metric for metric in ENGINE_METRICS.values() if metric not in names]
        assert not missing, f"{root}/metrics lacks {missing}"
        labelled = [line for line in text.splitlines() if line.startswith("vllm:request_success_total{")]
        assert labelled and all('engine="0"' in line and f'model_name="{MODEL}"' in line for line in labelled), root



@pytest.mark.parametrize("route, options", [case[:2] for case in REFUSED], ids=[f"{c[0]} {c[1]}" for c in REFUSED])
def test_a_refused_option_is_refused_alike(vllm, sim_root: str, route: str, options: dict[str, Any]) -> None:
    """The options the simulator refuses (by ``mpiswarm.options``), refused by vLLM with the same
    status, type, param and code; a type error (pydantic's) with the same message too. Range
    errors are worded by mpiswarm (one line naming the option), not in vLLM's words."""
    answers = []
    for root in (vllm.root_url, sim_root):
        status, payload = request(root + "/v1" + route, with_input(route, options, MODEL))
        error = payload["error"]
        answers.append({"status": status, "keys": keys(payload), "error_keys": keys(error), "type": error["type"],
                        "param": error["param"], "code": error["code"],
                        "message": error["message"] if error["type"] == "Bad Request" else None})
    assert answers[1] == answers[0]


STRUCTURED = [  # (route, structured output, is the answer valid for it)
    ("/completions", {"structured_outputs": {"choice": ["yes", "no", "unknown"]}},
     lambda text: text in ("yes", "no", "unknown")),
    ("/chat/completions", {"structured_outputs": {"choice": ["yes", "no"]}}, lambda text: text in ("yes", "no")),
    ("/completions", {"structured_outputs": {"regex": "[ab]{3}"}}, lambda text: re.fullmatch("[ab]{3}", text)),
    ("/chat/completions", {"structured_outputs": {"regex": r"\d{2}-[a-z]"}},
     lambda text: re.fullmatch(r"\d{2}-[a-z]", text)),
    ("/completions", {"structured_outputs": {"grammar": 'root ::= "yes" | "no"'}}, lambda text: text in ("yes", "no")),
    ("/chat/completions/batch", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "integer", "minimum": 0}}}}, lambda text: int(text) >= 0),
]


@pytest.mark.parametrize("route, options, valid", STRUCTURED, ids=[f"{c[0]} {list(c[1].values())[0]}"
                                                                   for c in STRUCTURED])
def test_structured_outputs_are_answered_alike(vllm, sim_root: str, route: str, options: dict[str, Any],
                                               valid) -> None:
    """A structured-output request: answered 200 by both, in the same shape, each answer valid
    for its constraint (the tiny model's too: vLLM's grammar holds it)."""
    body = {**with_input(route, options, MODEL), "max_tokens": 8, "temperature": 0}
    shapes = []
    for root in (vllm.root_url, sim_root):
        status, payload = request(root + "/v1" + route, body)
        assert status == 200, (root, payload)
        choice = payload["choices"][0]
        text = choice["text"] if "text" in choice else choice["message"]["content"]
        assert valid(text), (root, text)
        shapes.append(shape("/v1" + route, status, payload))
    assert shapes[1] == shapes[0]


def test_a_lora_adapter_is_served_alike(vllm_lora) -> None:
    """A server with a LoRA adapter and the simulator with ``--lora``: the same model cards
    (the adapter's parent the base model), the adapter answering under its own name on every
    route, an unknown name 404 naming the base model only; and on vLLM the adapter's greedy
    answer is not the base model's."""
    config = SimConfig(model=MODEL, max_model_len=MAX_MODEL_LEN, time_scale=0, lora_modules=(LORA_NAME,))
    cases = [("/v1/models", None),
             ("/v1/completions", {"model": LORA_NAME, "prompt": ["hello", "world"], "max_tokens": 4, "temperature": 0}),
             ("/v1/chat/completions", {"model": LORA_NAME, "messages": USER, "max_tokens": 4}),
             ("/v1/chat/completions/batch", {"model": LORA_NAME, "messages": [USER, USER], "max_tokens": 4}),
             ("/v1/completions", {"model": "llama-wrong", "prompt": "a", "max_tokens": 2})]
    with run_in_thread(config) as sim:
        root = sim.urls[0].removesuffix("/v1")
        for path, body in cases:
            real_status, real = request(vllm_lora.root_url + path, body)
            sim_status, simulated = request(root + path, body)
            assert shape(path, sim_status, simulated) == shape(path, real_status, real), path
            if path != "/v1/models" and real_status == 200:
                assert real["model"] == simulated["model"] == LORA_NAME
    greedy = {"prompt": "hello world", "max_tokens": 8, "temperature": 0}
    texts = {model: request(vllm_lora.root_url + "/v1/completions", {"model": model, **greedy})[1]["choices"][0]["text"]
             for model in (MODEL, LORA_NAME)}
    assert texts[MODEL] != texts[LORA_NAME], texts
