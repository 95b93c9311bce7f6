"""Why one call to an endpoint failed: the errors :class:`mpiswarm.client.EndpointClient` raises.

Plain classes with no dependencies, so :mod:`mpiswarm.retry` can classify them without importing
an HTTP stack (the ``openai`` package and its ~700 type modules are not needed by a rank).
"""
from __future__ import annotations

import enum
import json


class CallError(Exception):
    """A call that got no usable answer."""


class StatusError(CallError):
    """The endpoint answered with an HTTP error status; ``message`` is its own explanation
    (vLLM's ``{"error": {"message"}}``, an older ``{"message"}``, or the body's text)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(http_line(status_code, message))
        self.status_code = status_code
        self.message = message


def http_line(status_code: int, message: str) -> str:
    """How a failed call's HTTP status and the server's words read in the ``error`` column."""
    return f"HTTP {status_code}: {message}"


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


class ErrorKind(enum.IntEnum):
    """Why a row has no answer, set where that is known and stored beside its ``error`` message
    (column ``error_kind``; in files and exports by :attr:`label`), so that nothing reads the
    message text back to find out."""

    NONE = 0  # answered
    NOT_ATTEMPTED = 1  # no call carried it (yet)
    NOT_ANSWERED = 2  # unfinished when the job stopped or every endpoint was down: a resume sends it
    TIMEOUT = 3  # no answer within the call's timeout
    CONNECTION = 4  # the connection could not be made or broke
    RATE_LIMITED = 5  # HTTP 429
    CONTEXT_LENGTH = 6  # an HTTP 4xx saying the prompt does not fit the model's context
    HTTP_CLIENT = 7  # any other HTTP 4xx: the server refused the request
    HTTP_SERVER = 8  # HTTP 5xx
    BAD_REPLY = 9  # 200s that did not answer the row, until the retries were spent
    NO_ROOM = 10  # --max-tokens auto: the prompt leaves no room for an answer (not sent)
    NO_INPUT = 11  # a tree reduction's group whose inputs all failed
    OTHER = 12

    @property
    def label(self) -> str:
        """The name stored and exported: '' for NONE, else e.g. ``context_length``."""
        return "" if self is ErrorKind.NONE else self.name.lower()

    @property
    def unanswered(self) -> bool:
        """Whether the row was never finished (a resume sends it again) rather than failed."""
        return self in (ErrorKind.NOT_ATTEMPTED, ErrorKind.NOT_ANSWERED)


#: label -> kind, for readers of stored labels
KIND_BY_LABEL = {kind.label: kind for kind in ErrorKind}

#: What vLLM's over-long-prompt 400s say, old and new: "This model's maximum context length is L
#: tokens. However, you requested …" (before 0.1x) and "… However, your prompt contains at least P
#: input tokens …" / "… contains N characters …" (0.32: vllm/renderers/params.py), "Input length (P)
#: exceeds model's maximum context length (L)." (serve/utils/api_utils.py), "The decoder prompt
#: (length P) … is longer than the maximum model length of L." (v1/engine/input_processor.py).
_CONTEXT_LENGTH_PHRASES = ("maximum context length", "maximum model length")


def is_context_length_error(message: str) -> bool:
    """Whether a server's error message is "the prompt does not fit the context" (vLLM's
    wordings of any version, see ``_CONTEXT_LENGTH_PHRASES``)."""
    return any(phrase in message for phrase in _CONTEXT_LENGTH_PHRASES)


def kind_of(exc: BaseException) -> tuple[ErrorKind, int]:
    """``(kind, HTTP status or -1)`` of a failed call's exception."""
    if isinstance(exc, StatusError):
        status = exc.status_code
        if status == 429:
            return ErrorKind.RATE_LIMITED, status
        if status >= 500:
            return ErrorKind.HTTP_SERVER, status
        if 400 <= status < 500:
            return (ErrorKind.CONTEXT_LENGTH if is_context_length_error(exc.message) else ErrorKind.HTTP_CLIENT), status
        return ErrorKind.OTHER, status
    if isinstance(exc, CallTimeout):
        return ErrorKind.TIMEOUT, -1
    if isinstance(exc, ConnectionFailed):
        return ErrorKind.CONNECTION, -1
    return ErrorKind.OTHER, -1
