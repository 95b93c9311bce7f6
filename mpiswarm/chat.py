"""Chat rows (pure: no MPI, no network): conversations in OpenAI's chat format.

A JSONL row with ``messages``, or an OpenAI Batch row whose ``url`` is
``/v1/chat/completions``, is a chat row. It travels as a request row like any other: its
``prompt`` is the conversation as canonical JSON (what the result file stores), and its
overrides carry :data:`CHAT_KEY`, so chat rows share a call only with chat rows of the same
options. The dispatcher sends a call of chat rows to ``/v1/chat/completions/batch`` when the
endpoint serves it (vLLM >= 0.32) and the call asks one answer a conversation, else one
``/v1/chat/completions`` call a row.
"""
from __future__ import annotations

import json

#: --chat-route: the batch route where every endpoint serves it (auto), or never (single)
CHAT_ROUTES = ("auto", "single")
#: the override key that marks a chat row (no request field begins with '_')
CHAT_KEY = "_chat"
#: roles OpenAI's chat format (and vLLM's ChatCompletionMessageParam) has
ROLES = frozenset(("system", "developer", "user", "assistant", "tool"))


def check_conversation(messages) -> list:
    """``messages`` if it is a conversation vLLM takes: a non-empty list of messages, each an
    object with a known ``role`` and a ``content`` that is a string or a list of text parts
    (``{"type": "text", "text": …}``; an assistant's may be null). ValueError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of messages")
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: 'role' must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        content = message.get("content")
        if content is None and role == "assistant":
            continue
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise ValueError(f"{where}.content[{j}] must be a text part {{'type': 'text', 'text': …}}")
        elif not isinstance(content, str):
            raise ValueError(f"{where}: 'content' must be a string or a list of text parts")
    return messages


def encode(messages: list) -> str:
    """The conversation as the row's prompt: canonical JSON (UTF-8 as it is)."""
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def fill_contents(messages: list, render) -> list:
    """The conversation with every message's text (a string content, and each text part) as
    ``render(text)`` makes it: under ``--template``, each text a template over the row's fields."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            content = render(content)
        elif isinstance(content, list):
            content = [{**part, "text": render(part["text"])} for part in content]
        out.append({**message, "content": content})
    return out


def is_chat(overrides: str) -> bool:
    """Whether a row's overrides (canonical JSON) mark it a chat row."""
    return f'"{CHAT_KEY}":true' in overrides


def conversation(prompt: str, chat_row: bool) -> list:
    """What a row sends to a chat route: a chat row's own conversation, else its prompt as
    the one user message."""
    return json.loads(prompt) if chat_row else [{"role": "user", "content": prompt}]


def batchable(params: dict) -> bool:
    """Whether a call with these options can go to ``/v1/chat/completions/batch``: one answer
    a conversation (its ``n`` must be 1). Every other option is taken: the batch request hands
    the fields it does not list to each conversation's ``ChatCompletionRequest`` (vLLM 0.32,
    ``BatchChatCompletionRequest.to_chat_completion_request``; ``min_tokens`` above
    ``max_tokens`` is refused there as on the single route, so it arrives)."""
    return params.get("n", 1) == 1
