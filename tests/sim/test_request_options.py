"""The simulator takes vLLM 0.32's whole request as vLLM does: the batch chat route and its
validation, the options of :mod:`mpiswarm.options` refused in vLLM's error shape, structured
outputs (regex and grammar included), logprobs, a model or LoRA adapter per request."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import pytest

from mpiswarm.sim import SimConfig, run_in_thread
from mpiswarm.sim.pattern import grammar_example, regex_example

MODEL = "sim-model"
USER = [{"role": "user", "content": "hello"}]


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:  # aiohttp's own 404 of a route it does not serve
            return exc.code, {"text": text.decode()}


def with_input(route: str, options: dict, model: str = MODEL) -> dict:
    """A request of ``route`` (``/completions``, ``/chat/completions`` or its batch) with ``options``."""
    body = {"model": model, "max_tokens": 3, **options}
    if route == "/completions":
        body["prompt"] = "hello"
    else:
        body["messages"] = [USER] if route.endswith("batch") else USER
    return body


@pytest.fixture(scope="module")
def sim():
    with run_in_thread(SimConfig(time_scale=0, lora_modules=("ada",))) as handle:
        yield handle.urls[0]


# --------------------------------------------------------------------------- refusals


REFUSED = [  # (route, options, vLLM's type, vLLM's param)
    ("/completions", {"top_k": "abc"}, "Bad Request", "body.top_k"),
    ("/completions", {"top_k": 1.5}, "Bad Request", "body.top_k"),
    ("/completions", {"ignore_eos": 2}, "Bad Request", "body.ignore_eos"),
    ("/completions", {"logit_bias": [1]}, "Bad Request", "body.logit_bias"),
    ("/completions", {"top_k": -2}, "BadRequestError", None),
    ("/completions", {"min_p": 1.5}, "BadRequestError", None),
    ("/completions", {"repetition_penalty": 0}, "BadRequestError", None),
    ("/completions", {"presence_penalty": 2.5}, "BadRequestError", None),
    ("/completions", {"min_tokens": -1}, "BadRequestError", None),
    ("/completions", {"logprobs": 21}, "BadRequestError", "logprobs"),
    ("/completions", {"stop_token_ids": [-1]}, "BadRequestError", "stop_token_ids"),
    ("/completions", {"logit_bias": {"a": 1}}, "BadRequestError", "logit_bias"),
    ("/completions", {"structured_outputs": {"choice": ["a"], "regex": "a"}}, "BadRequestError",
     "structured_outputs"),
    ("/chat/completions", {"structured_outputs": {"choice": ["a"], "regex": "a"}}, "BadRequestError", None),
    ("/completions", {"structured_outputs": {"choice": []}}, "BadRequestError", None),
    ("/completions", {"response_format": {"type": "json_schema"}}, "BadRequestError", "response_format"),
    ("/chat/completions", {"logprobs": False, "top_logprobs": 2}, "BadRequestError", "top_logprobs"),
    # over --max-logprobs: vLLM names its SamplingParams.logprobs
    ("/chat/completions", {"logprobs": True, "top_logprobs": 21}, "BadRequestError", "logprobs"),
    ("/chat/completions", {"logprobs": "x"}, "Bad Request", "body.logprobs"),
    ("/chat/completions/batch", {"top_k": -2}, "BadRequestError", None),
    ("/chat/completions/batch", {"top_logprobs": 2}, "BadRequestError", "top_logprobs"),
]


@pytest.mark.parametrize("route, options, err_type, param", REFUSED, ids=[json.dumps(c[1]) for c in REFUSED])
def test_a_refused_option_is_answered_in_vllms_shape(sim, route, options, err_type, param):
    status, payload = post(sim + route, with_input(route, options))
    error = payload["error"]
    assert (status, error["type"], error["param"], error["code"]) == (400, err_type, param, 400)
    if err_type == "Bad Request":  # pydantic's words, as vLLM's handler shows them
        assert error["message"].startswith("1 validation error:\n  {'type': ")
        assert f"'loc': '{param}'" in error["message"]
    else:  # mpiswarm.options' one line, naming the option
        assert "\n" not in error["message"] and any(f"'{key}'" in error["message"] for key in options)


def test_accepted_edge_values_are_answered(sim):
    for options in ({"top_k": 0}, {"top_k": -1}, {"min_p": 1}, {"presence_penalty": -2}, {"min_tokens": 3},
                    {"stop_token_ids": [5]}, {"logit_bias": {"5": 500}}, {"logprobs": 20}, {"seed": -1},
                    {"response_format": {"type": "text"}}, {"extra_body": {"anything": 1}}):
        status, payload = post(sim + "/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 3, **options})
        assert status == 200, (options, payload)


# --------------------------------------------------------------------------- the batch chat route


def test_the_batch_route_answers_each_conversation_as_alone(sim):
    conversations = [USER, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "yo"}],
                     [{"role": "user", "content": [{"type": "text", "text": "parts"}]}]]
    options = {"max_tokens": 6, "logprobs": True, "top_logprobs": 2, "seed": 4}
    status, batch = post(sim + "/chat/completions/batch", {"model": MODEL, "messages": conversations, **options})
    assert status == 200 and [c["index"] for c in batch["choices"]] == [0, 1, 2]
    for conversation, choice in zip(conversations, batch["choices"]):
        _, alone = post(sim + "/chat/completions", {"model": MODEL, "messages": conversation, **options})
        assert choice["message"] == alone["choices"][0]["message"]
        assert choice["logprobs"] == alone["choices"][0]["logprobs"]
        assert all(len(e["top_logprobs"]) == 2 for e in choice["logprobs"]["content"])


@pytest.mark.parametrize("messages, loc, kind", [
    ([], "body.messages", "too_short"),
    ([[]], "body.messages.0", "too_short"),
    (USER, "body.messages.0", "list_type"),
    ([USER, "text"], "body.messages.1", "list_type"),
], ids=["no-conversation", "empty-conversation", "flat-messages", "a-string"])
def test_the_batch_route_refuses_messages_as_vllm_does(sim, messages, loc, kind):
    status, payload = post(sim + "/chat/completions/batch", {"model": MODEL, "messages": messages})
    error = payload["error"]
    assert (status, error["type"], error["param"]) == (400, "Bad Request", loc)
    assert f"'type': '{kind}'" in error["message"]


def test_the_batch_route_takes_n_1_only_and_can_be_hidden(sim):
    status, payload = post(sim + "/chat/completions/batch", {"model": MODEL, "messages": [USER], "n": 2})
    assert status == 400 and payload["error"]["param"] == "n"
    assert payload["error"]["message"] == ("Batch chat completions do not support `n > 1`. Please set `n` to 1. "
                                           "(parameter=n, value=2)")
    with run_in_thread(SimConfig(time_scale=0, chat_batch=False)) as hidden:
        status, _ = post(hidden.urls[0] + "/chat/completions/batch", {"model": MODEL, "messages": [USER]})
    assert status == 404


# --------------------------------------------------------------------------- structured outputs


@pytest.mark.parametrize("regex", [r"[ab]{3}", r"(yes|no|maybe)", r"\d{3}-\d{4}", r"[A-Z][a-z]+( [a-z]+){0,3}\.",
                                   r"^\w+@\w+\.(com|org)$", r"[^0-9]{2,5}", ""])
def test_a_regex_row_is_answered_with_a_match(sim, regex):
    status, payload = post(sim + "/completions", {"model": MODEL, "prompt": ["p1", "p2"],
                                                  "structured_outputs": {"regex": regex}})
    assert status == 200
    assert all(re.fullmatch(regex, c["text"]) for c in payload["choices"]), payload["choices"]


def test_a_grammar_row_is_answered_in_its_language(sim):
    grammar = 'root ::= answer " " score\nanswer ::= "yes" | "no"\nscore ::= [1-5]'
    status, payload = post(sim + "/chat/completions", {"model": MODEL, "messages": USER,
                                                       "structured_outputs": {"grammar": grammar}})
    assert status == 200 and re.fullmatch(r"(yes|no) [1-5]", payload["choices"][0]["message"]["content"])


@pytest.mark.parametrize("spec, words", [
    ({"regex": r"(a)\1"}, "escape \\1"),
    ({"regex": r"(?=a)b"}, "look-arounds"),
    ({"grammar": 'root ::= "a" root | "b"'}, "recursive"),
    ({"grammar": "start: /a+/"}, "GBNF"),
])
def test_what_the_simulator_cannot_generate_is_a_400_naming_it(sim, spec, words):
    status, payload = post(sim + "/completions", {"model": MODEL, "prompt": "x", "structured_outputs": spec})
    assert status == 400 and words in payload["error"]["message"]


def test_pattern_answers_are_deterministic_per_seed():
    assert regex_example(r"\w{8}", b"ab") == regex_example(r"\w{8}", b"ab") != regex_example(r"\w{8}", b"cd")
    assert grammar_example('root ::= [a-z]{6}', b"ab") == grammar_example('root ::= [a-z]{6}', b"ab")


# --------------------------------------------------------------------------- a model per request


def test_an_adapter_is_answered_under_its_name_an_unknown_model_is_404(sim):
    status, payload = post(sim + "/completions", {"model": "ada", "prompt": "hi", "max_tokens": 2})
    assert status == 200 and payload["model"] == "ada"
    status, payload = post(sim + "/chat/completions/batch", {"model": "ada", "messages": [USER], "max_tokens": 2})
    assert status == 200 and payload["model"] == "ada"
    status, payload = post(sim + "/chat/completions/batch", {"model": "nope", "messages": [USER]})
    assert status == 404 and payload["error"] == {
        "message": f"The model `nope` does not exist. Valid aliases: {MODEL}.", "type": "NotFoundError",
        "param": "model", "code": 404}


# --------------------------------------------------------------------------- logprobs and min_tokens


@pytest.mark.parametrize("temperature, k, per_token", [(0, 2, 2), (0, 0, 1), (0.8, 2, 3), (None, 0, 1)])
def test_completions_logprobs_count_the_sampled_token_as_vllm_does(sim, temperature, k, per_token):
    """Greedy, the sampled token is among the top k (k entries); sampled, it comes with them
    (k + 1); with k 0 it comes alone."""
    body = {"model": MODEL, "prompt": "alpha", "max_tokens": 4, "logprobs": k, "seed": 1}
    if temperature is not None:
        body["temperature"] = temperature
    _, payload = post(sim + "/completions", body)
    logprobs = payload["choices"][0]["logprobs"]
    assert [len(t) for t in logprobs["top_logprobs"]] == [per_token] * len(logprobs["tokens"])
    assert "".join(logprobs["tokens"]) == payload["choices"][0]["text"]
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"]):
        assert top[token] == logprob and (max(top.values()) == logprob) == (temperature == 0 or k == 0)


def test_chat_logprobs_give_top_logprobs_entries_a_token(sim):
    _, payload = post(sim + "/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 4,
                                                  "logprobs": True, "top_logprobs": 3})
    content = payload["choices"][0]["logprobs"]["content"]
    assert all(len(e["top_logprobs"]) == 3 and e["bytes"] == list(e["token"].encode()) for e in content)
    assert "".join(e["token"] for e in content) == payload["choices"][0]["message"]["content"]


def test_min_tokens_over_max_tokens_is_refused_with_vllms_words(sim):
    status, payload = post(sim + "/completions", {"model": MODEL, "prompt": "x", "max_tokens": 3, "min_tokens": 4})
    assert status == 400 and payload["error"]["message"] == "min_tokens must be less than or equal to max_tokens=3, got 4."
    status, payload = post(sim + "/completions", {"model": MODEL, "prompt": "x", "min_tokens": 17})  # default 16
    assert status == 400 and "max_tokens=16" in payload["error"]["message"]
