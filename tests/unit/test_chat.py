"""Chat rows: parsing, templates, the route a call takes, and batch replies (tier 1: no MPI)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mpiswarm.chat import CHAT_KEY, batchable, conversation, is_chat
from mpiswarm.client import BadReply, ClientOptions, place_chat_batch
from mpiswarm.dispatch import CHAT, CHAT_BATCH, COMPLETIONS, Dispatcher
from mpiswarm.inputs import InputError, read_prompts
from mpiswarm.records import RankStats, ResultColumns

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi {name}"}]


def write(tmp_path, rows, name="in.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_chat_rows_and_prompt_rows_in_one_file(tmp_path):
    path = write(tmp_path, [
        {"custom_id": "a", "messages": CONVERSATION, "name": "Ada", "max_tokens": 5},
        {"custom_id": "b", "prompt": "plain"},
        {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "part"}]}],
                  "temperature": 0}},
        {"custom_id": "d", "url": "/v1/completions", "body": {"prompt": "batch prompt", "seed": 3}},
    ])
    ps = read_prompts(path)
    assert [json.loads(p) if is_chat(o) else p for p, o in zip(ps.prompts, ps.overrides)] == [
        CONVERSATION, "plain", [{"role": "user", "content": [{"type": "text", "text": "part"}]}], "batch prompt"]
    assert [is_chat(o) for o in ps.overrides] == [True, False, True, False]
    assert json.loads(ps.overrides[0]) == {CHAT_KEY: True, "max_tokens": 5}
    assert ps.custom_ids == ["a", "b", "c", "d"]
    # --template fills every message's text from the row's fields; --prompt-format leaves conversations alone
    ps = read_prompts(path, template="Q: {prompt}", prompt_format="<u>{prompt}</u>")
    assert json.loads(ps.prompts[0])[1] == {"role": "user", "content": "Hi Ada"}
    assert ps.prompts[1] == "<u>Q: plain</u>" and json.loads(ps.prompts[2])[0]["content"][0]["text"] == "part"


@pytest.mark.parametrize("row, words", [
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0]: 'role' must be one of"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0]: 'content' must be a string or a list of text parts"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0] must be a text part"),
    ({"messages": [{"role": "user", "content": "x"}], "prompt": "y"}, "'messages' or 'prompt', not both"),
    ({"url": "/v1/embeddings", "body": {"input": "x"}}, "batch row 'url' must be one of"),
    ({"url": "/v1/chat/completions", "body": {"prompt": "x"}}, "body takes 'messages', not 'prompt'"),
    ({"url": "/v1/chat/completions", "body": {"model": "m"}}, "'messages' must be a non-empty list"),
])
def test_bad_chat_rows_name_their_line(tmp_path, row, words):
    path = write(tmp_path, [{"prompt": "fine"}, row])
    with pytest.raises(InputError) as info:
        read_prompts(path)
    assert str(info.value).startswith(f"{path}:2: ") and words in str(info.value)


def test_a_template_field_a_message_lacks_is_named(tmp_path):
    path = write(tmp_path, [{"messages": [{"role": "user", "content": "Hi {who}"}]}])
    with pytest.raises(InputError, match=r":1: this row has no field \{who\}"):
        read_prompts(path, template="{prompt}")


def test_route_of_a_call():
    def route(api, batch, params):
        options = ClientOptions(model="m", api=api, chat_batch=batch)
        pool = type("Pool", (), {"options": options, "urls": ["u"]})()
        return Dispatcher(pool, RankStats(rank=0, host="h", endpoint="u")).route(params)

    assert route("completions", True, {}) == COMPLETIONS
    assert route("completions", True, {CHAT_KEY: True}) == CHAT_BATCH
    assert route("completions", False, {CHAT_KEY: True}) == CHAT
    assert route("chat", True, {"max_tokens": 4}) == CHAT_BATCH
    assert route("chat", True, {"n": 2}) == CHAT  # the batch route answers one choice a conversation
    assert route("chat", True, {"min_tokens": 2}) == CHAT_BATCH  # the batch route hands it to each conversation
    assert batchable({"temperature": 0, "structured_outputs": {"choice": ["a"]}, "ignore_eos": True})
    assert not batchable({"n": 3})
    assert ClientOptions(model="m", api="chat").calls_in_flight() == 128
    assert ClientOptions(model="m", api="chat", chat_batch=True).calls_in_flight() == 8
    assert conversation("hi", False) == [{"role": "user", "content": "hi"}]


def test_batch_replies_placed_by_index_and_bad_ones_retried():
    reply = {"choices": [{"index": i, "message": {"role": "assistant", "content": f"a{i}", "reasoning": f"r{i}"},
                          "finish_reason": "stop"} for i in (2, 0, 1)]}
    res = ResultColumns.pending(np.arange(5), 1, 0)
    assert place_chat_batch(reply, [4, 0, 3], res, 0.5) == 3
    assert [res.completion[r] for r in (4, 0, 3)] == ["a0", "a1", "a2"] and res.reasoning[3] == "r2"
    assert res.ok.tolist() == [True, False, False, True, True]
    missing = {"choices": [{"index": 0, "message": {"content": "x"}, "finish_reason": "stop"},
                           {"index": 0, "message": {"content": "y"}, "finish_reason": "stop"}]}
    res = ResultColumns.pending(np.arange(2), 1, 0)
    with pytest.raises(BadReply):
        place_chat_batch(missing, [0, 1], res, 0.5)
    assert not res.ok.any() and "repeated" in res.error[0] and not res.done.any()
