"""What the real-engine tiers (``tests/engine``, ``tests/vllm``) share: their own HTTP calls to
a server, the reference of a row — the server's answer to its prompt sent alone — and the
choices of an answer read as mpiswarm stores them."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

#: The served name of the tiny model (llama-server ignores the request's model name).
MODEL = "tiny"
#: Deadline of one HTTP request of the tests themselves.
HTTP_TIMEOUT = 120.0


def request(url: str, body: Any = None) -> tuple[int, Any]:
    """GET (no body) or POST JSON; (status, decoded JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def post_ok(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON and return the decoded answer; fail the test unless it is 200."""
    status, payload = request(url, body)
    assert status == 200, f"POST {url} -> {status}: {str(payload)[:500]}"
    return payload


def get_ok(url: str) -> Any:
    """GET and return the decoded answer; fail the test unless it is 200."""
    status, payload = request(url)
    assert status == 200, f"GET {url} -> {status}: {str(payload)[:500]}"
    return payload


def stored(text: str) -> str:
    """A text as mpiswarm stores it: U+0000 as U+FFFD (HDF5's strings cannot hold NUL)."""
    return text.replace("\x00", "\ufffd")


def custom_ids(rows: list[dict[str, Any]]) -> list[str]:
    """The ``custom_id`` of every row as mpiswarm gives it (the row number when it has none)."""
    return [row.get("custom_id", str(i)) for i, row in enumerate(rows)]


_ALONE: dict[str, dict[str, Any]] = {}


def alone(server, prompt: str, params: dict[str, Any], *, chat: bool = False) -> dict[str, Any]:
    """The server's ``/v1/completions`` answer to ``prompt`` sent alone (with ``chat``, its
    ``/v1/chat/completions`` answer to the prompt as the one user message).  Cached per server
    process for the session: the tests compare greedy and seeded requests, which the servers
    answer the same every time."""
    if chat:
        route, body = "/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    else:
        route, body = "/completions", {"model": MODEL, "prompt": prompt}
    body.update(params)
    key = json.dumps([server.root_url, server.pid, route, body], sort_keys=True)
    if key not in _ALONE:
        _ALONE[key] = post_ok(server.base_url + route, body)
    return _ALONE[key]


def choices(payload: dict[str, Any], chat: bool = False) -> list[tuple[str, str]]:
    """(text as stored, finish_reason) of every choice, by ``index``."""
    ordered = sorted(payload["choices"], key=lambda choice: choice["index"])
    assert [choice["index"] for choice in ordered] == list(range(len(ordered)))
    return [(stored(choice["message"]["content"] if chat else choice["text"]), choice["finish_reason"])
            for choice in ordered]
