"""The options table (``mpiswarm.options``) held to vLLM 0.32's own server: every case
``tests/unit/test_options.py`` refuses is refused by vLLM (400) on the route it is for — the
chat cases on ``/v1/chat/completions`` and on its batch route — and its accepted edge cases are
accepted (200).  Cases mpiswarm refuses on purpose where vLLM's lax models coerce or ignore
(STRICTER) are held as vLLM answers them (200), and ``structured_outputs: "x"`` as the 500 vLLM
answers it with, so that a change of vLLM's shows here.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mpiswarm.options import CHAT, COMPLETIONS

from ..unit.test_options import ACCEPTED, REFUSED, STRICTER, VLLM_500, per_route
from .test_vllm_runs import MODEL, request

#: the chat routes a chat case is sent to
BATCH = "chat-batch"
PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions", BATCH: "/v1/chat/completions/batch"}
CONVERSATION = [{"role": "user", "content": "hi"}]


def body(route: str, options: dict[str, Any]) -> dict[str, Any]:
    """The request for ``options`` on ``route``, three tokens unless they say; ``extra_body``
    merged into it, as the openai client does."""
    options = dict(options)
    extra = options.pop("extra_body", None) or {}
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 3}
    if route == COMPLETIONS:
        base["prompt"] = "hello"
    else:
        base["messages"] = [CONVERSATION] if route == BATCH else CONVERSATION
    return {**base, **options, **extra}


#: where the batch route answers otherwise than /v1/chat/completions: BatchChatCompletionRequest
#: coerces a field before ChatCompletionRequest's checks see it ("2" -> 2), and refuses a
#: structured_outputs that is not an object with a 400 where the single route has a 500
BATCH_ANSWERS = {repr({"logprobs": True, "top_logprobs": "2"}): 200, repr({"n": "2"}): 400,
                 repr({"structured_outputs": "x"}): 400}


def cases() -> list[tuple[str, str, dict[str, Any], int]]:
    """(what, path, options, vLLM's status) for every case of the table on each route it is
    for; chat cases on the batch route too, but for accepted ones with an ``n`` other than 1
    (that route takes only ``n`` 1)."""
    out = []
    for what, listed, status in (("refused", REFUSED, 400), ("accepted", ACCEPTED, 200),
                                 ("stricter", STRICTER, 200), ("vllm-500", VLLM_500, 500)):
        for route, options, *_ in per_route(listed):
            out.append((what, route, options, status))
            if route == CHAT and not (what == "accepted" and options.get("n", 1) != 1):
                out.append((what, BATCH, options, BATCH_ANSWERS.get(repr(options), status)))
    return out


def answer(root_url: str, route: str, options: dict[str, Any]) -> tuple[int, str]:
    status, payload = request(root_url + PATHS[route], body(route, options))
    return status, str(payload)[:300]


@pytest.mark.parametrize("what, route, options, status", cases(),
                         ids=lambda value: json.dumps(value, separators=(",", ":"))[:70]
                         if isinstance(value, dict) else str(value))
def test_vllm_answers_each_case_as_the_table_says(vllm, what: str, route: str, options: dict[str, Any],
                                                  status: int) -> None:
    got, text = answer(vllm.root_url, route, options)
    assert got == status, text
