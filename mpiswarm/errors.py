"""Why one call to an endpoint failed: the errors :class:`mpiswarm.client.EndpointClient` raises.

Plain classes with no dependencies, so :mod:`mpiswarm.retry` can classify them without importing
an HTTP stack (the ``openai`` package and its ~700 type modules are not needed by a rank).
"""
from __future__ import annotations

import json


class CallError(Exception):
    """A call that got no usable answer."""


class StatusError(CallError):
    """The endpoint answered with an HTTP error status; ``message`` is its own explanation
    (vLLM's ``{"error": {"message"}}``, an older ``{"message"}``, or the body's text)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class CallTimeout(CallError):
    """No answer within the call's timeout."""


class ConnectionFailed(CallError):
    """The connection could not be made or broke (the transport's error is ``__cause__``)."""


def status_message(status_code: int, body: bytes) -> str:
    """The explanation in an error response's body: vLLM and llama.cpp nest it in
    ``{"error": {"message"}}``, older servers put ``message`` (or ``detail``) at the top."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        for source in (inner if isinstance(inner, dict) else {}, data):
            for key in ("message", "detail"):
                if isinstance(source.get(key), str) and source[key]:
                    return source[key]
        if isinstance(inner, str) and inner:
            return inner
    text = body.decode("utf-8", "replace").strip()
    return text[:500] if text else f"status {status_code}"
