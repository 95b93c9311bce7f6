"""How vLLM 0.32 words a 400 for a request option, so that the simulator refuses as it does.

Which values are refused is :mod:`mpiswarm.options`' one table (:func:`option_refusal` asks it);
this module only gives each refusal vLLM's error ``type`` and ``param``, which depend on the
layer of vLLM that refuses (read in its source and checked against its server by
``tests/vllm/test_conformance.py``):

* a value of the wrong JSON type fails the request's pydantic model: FastAPI's
  ``RequestValidationError``, answered by ``serve/exception_handling/handlers/validation.py``
  with type ``"Bad Request"``, ``param`` the field's path (``body.top_k``) and the message
  ``1 validation error:\\n  {'type': 'int_parsing', 'loc': 'body.top_k', 'msg': …, 'input': …}``
  (:func:`validation_error`);
* a value of the right type out of range is a ``VLLMValidationError`` (``SamplingParams._verify_args``,
  the request models' ``check_logprobs`` …): type ``"BadRequestError"``, ``param`` what it names,
  null for most of ``_verify_args`` (:data:`RANGE_PARAMS`).

The message of a range refusal is mpiswarm's own (one line naming the option and vLLM's rule),
not vLLM's words. mpiswarm is stricter than vLLM in places (``"5"`` for an integer, see
:mod:`mpiswarm.options`): the simulator then refuses what vLLM would coerce and take.
"""
from __future__ import annotations

from ..options import CHAT, OPTIONS, check_option
from ..options import validate as validate_options

#: ``param`` of vLLM's 400 for a value of the right type out of range (absent: null, as
#: ``_verify_args`` raises most of its errors without one)
RANGE_PARAMS = {"stop_token_ids": "stop_token_ids", "logit_bias": "logit_bias", "logprobs": "logprobs",
                "top_logprobs": "top_logprobs", "response_format": "response_format"}

#: pydantic's (error type, message) for a value that is not of the field's type, by JSON type
_NOT_A = {
    "integer": ("int_type", "Input should be a valid integer"),
    "number": ("float_type", "Input should be a valid number"),
    "bool": ("bool_type", "Input should be a valid boolean"),
    "list": ("list_type", "Input should be a valid list"),
    "object": ("dict_type", "Input should be a valid dictionary"),
    "string": ("string_type", "Input should be a valid string"),
}
_PYTHON_TYPES = {"integer": int, "number": (int, float), "bool": bool, "list": list, "object": dict, "string": str}
#: the JSON type each option's pydantic field has (the table's ``kind`` in pydantic's words)
_FIELD_TYPES = {"integer": "integer", "number": "number", "bool": "bool", "object": "object",
                "list of integers": "list", "string": "string"}


class Refusal(ValueError):
    """A 400 in vLLM's shape: ``str(self)`` the message, with its ``param`` and ``err_type``."""

    def __init__(self, message: str, param: str | None, err_type: str = "BadRequestError"):
        super().__init__(message)
        self.param = param
        self.err_type = err_type


def _input_text(value) -> str:
    """A value as vLLM's handler shows it under ``input`` (containers by their size)."""
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)


def validation_error(loc: str, kind: str, msg: str, value, ctx: dict | None = None) -> Refusal:
    """vLLM's 400 for a request its pydantic model refuses: one error at ``loc`` (a dotted path
    under ``body``) of pydantic type ``kind`` with message ``msg``."""
    entry = {"type": kind, "loc": loc, "msg": msg, "input": _input_text(value)}
    if ctx is not None:
        entry["ctx"] = ctx
    return Refusal(f"1 validation error:\n  {entry!r}", loc, "Bad Request")


def type_error(key: str, value, route: str) -> Refusal | None:
    """The pydantic refusal when ``value`` is not of option ``key``'s JSON type, else None."""
    field = _FIELD_TYPES.get(OPTIONS[key].kind)
    if key == "logprobs":
        field = "bool" if route == CHAT else "integer"
    elif key == "stop":
        field = None if isinstance(value, (str, list)) else "string"
    elif key == "top_logprobs":
        field = "integer"
    if field is None:
        return None
    expected = _PYTHON_TYPES[field]
    ok = isinstance(value, expected) and (field == "bool" or not isinstance(value, bool))
    if field in ("integer", "number") and isinstance(value, str):
        ok = False
    if ok:
        return None
    kind, msg = _NOT_A[field]
    if field == "integer" and isinstance(value, float):
        kind, msg = "int_from_float", "Input should be a valid integer, got a number with a fractional part"
    elif field == "integer" and isinstance(value, str):
        kind, msg = "int_parsing", "Input should be a valid integer, unable to parse string as an integer"
    elif field == "number" and isinstance(value, str):
        kind, msg = "float_parsing", "Input should be a valid number, unable to parse string as a number"
    elif field == "bool" and isinstance(value, (int, float, str)):
        kind, msg = "bool_parsing", "Input should be a valid boolean, unable to interpret input"
    return validation_error(f"body.{key}", kind, msg, value)


def option_refusal(options: dict, route: str) -> Refusal | None:
    """The 400 vLLM 0.32 answers for ``options`` (a request's options of
    :data:`mpiswarm.options.OPTIONS`) on ``route``, or None if :func:`mpiswarm.options.validate`
    takes them: the first key refused alone, in the request's order (a type error first, as
    pydantic checks every field before vLLM's own checks), then the options as a whole."""
    for key, value in options.items():
        if value is None:
            continue
        refused = type_error(key, value, route)
        if refused is not None:
            return refused
    for key, value in options.items():
        try:
            check_option(key, value, route)
        except ValueError as exc:
            return Refusal(str(exc), _range_param(key, value, route))
    try:
        validate_options(options, route)
    except ValueError as exc:
        top = options.get("top_logprobs")
        return Refusal(str(exc), "top_logprobs" if top and not options.get("logprobs") else None)
    return None


def _range_param(key: str, value, route: str) -> str | None:
    if key == "structured_outputs" and route != CHAT and isinstance(value, dict) and sum(
            value.get(k) is not None for k in ("json", "regex", "choice")) > 1:
        return key  # CompletionRequest.check_structured_outputs_count names it; the chat request's does not
    if key == "top_logprobs" and value >= -1:
        return "logprobs"  # over --max-logprobs: SamplingParams._validate_logprobs names its logprobs
    return RANGE_PARAMS.get(key)
