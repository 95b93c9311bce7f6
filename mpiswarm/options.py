"""The request options vLLM 0.32 takes, one table, and their validation (pure: no MPI, no
network).

:data:`OPTIONS` has one :class:`Option` an option: its name, JSON type, vLLM's rule and the
routes that take it (:data:`COMPLETIONS` ``/v1/completions``, :data:`CHAT`
``/v1/chat/completions``, whose batch route takes the same fields). :func:`validate` checks a
row's options (or the command line's) as vLLM would, before anything is sent, and returns them
normalised (``None`` dropped, ``stop`` as a list); :func:`check_option` checks one option alone,
without the rules between options (:func:`conflict`). Every error is a ValueError of one short
line naming the option as ``name(key)`` names it: :func:`quoted` (``'top_p'``, a row) or
:func:`option_name` (``--top-p``, the command line).

The rules are vLLM 0.32.0's (paths under ``vllm/``): ``sampling_params.py``
(``SamplingParams._verify_args``, ``_verify_greedy_sampling``, ``_validate_logprobs``,
``_validate_structured_outputs``, ``StructuredOutputsParams.__post_init__``);
``entrypoints/openai/completion/protocol.py`` (``CompletionRequest``: its fields and
``check_logprobs``, ``validate_response_format``, ``check_structured_outputs_count``);
``entrypoints/openai/chat_completion/protocol.py`` (``ChatCompletionRequest``, same names);
``entrypoints/generate/base/protocol.py`` (``ResponseFormat``, ``JsonSchemaResponseFormat``,
``StopParam``, ``structured_outputs_from_response_format``); ``envs.py`` (limits).

Stricter than vLLM on purpose, where vLLM's pydantic models coerce or ignore: a bool is not a
number, ``"5"`` is not an integer, ``2.0`` is not an integer, ``"true"``/``1`` are not bools;
an unknown key of ``structured_outputs`` and ``top_logprobs`` on ``/v1/completions`` are refused
(vLLM ignores both); ``response_format`` json_object/json_schema with ``structured_outputs`` is
refused (vLLM lets the json_schema win over ``structured_outputs.json`` in silence). Left to the
server, which alone can judge them: token ids against its vocabulary (``stop_token_ids``,
``logit_bias``), regex and grammar syntax, a schema's nesting depth, a ``--max-logprobs`` other
than 20, and whether it serves ``model``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

#: the routes, as :func:`validate` names them, and their paths
COMPLETIONS = "completions"
CHAT = "chat"
ROUTES = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}
BOTH = (COMPLETIONS, CHAT)

#: temperature in [0, 2] (SamplingParams._verify_args: "temperature must be in [0, 2]")
TEMPERATURE_RANGE = (0.0, 2.0)
#: n at most VLLM_MAX_N_SEQUENCES (envs.py default; "n must be at most 16384")
MAX_N = 16384
#: seed: CompletionRequest/ChatCompletionRequest Field(ge=-2**63, le=2**63 - 1)
SEED_RANGE = (-(2**63), 2**63 - 1)
#: stop strings at most VLLM_MAX_STOP_STRINGS (envs.py default; StopParam's max_length)
MAX_STOP_STRINGS = 4
#: logprobs (completions) / top_logprobs (chat) at most ModelConfig.max_logprobs (config/model.py,
#: default 20; a server started with another --max-logprobs is not known here)
MAX_LOGPROBS = 20
#: the kinds of structured output, exactly one a request (StructuredOutputsParams.__post_init__;
#: structural_tag, the sixth, is not offered)
STRUCTURED_KINDS = ("json", "regex", "choice", "grammar", "json_object")
#: the other fields of StructuredOutputsParams, with the type each takes
STRUCTURED_MODIFIERS = {"disable_any_whitespace": bool, "disable_additional_properties": bool,
                        "whitespace_pattern": str}
#: response_format's types (ResponseFormat.type; structural_tag not offered)
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")

Name = Callable[[str], str]


def quoted(key: str) -> str:
    """How an option is named in a message about a row: ``'top_p'``."""
    return f"'{key}'"


def option_name(key: str) -> str:
    """How an option is named on the command line: ``--top-p``."""
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Option:
    """One request option: what it is, vLLM's rule in words, the routes that take it."""

    name: str
    #: its JSON type
    kind: str
    #: vLLM's range or rule
    rule: str
    routes: tuple[str, ...]
    #: ``check(value, label, route)``: the value as sent, or ValueError naming ``label``
    check: Callable[[Any, str, str], Any]


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value, label: str, low: int, high: int | None = None) -> None:
    """ValueError unless ``value`` is an integer (not a bool) in [low, high]."""
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{label} must be an integer {bound}, got {_short(value)}")


def _int(low: int, high: int | None = None):
    def check(value, label, route):
        check_int(value, label, low, high)
        return value
    return check


def _number(low: float, high: float | None, *, low_open: bool = False):
    """A finite number in [low, high] ((low, high] with ``low_open``; no upper bound when None)."""
    def text(x):
        return f"{x:g}"
    if high is None:
        words = f"> {text(low)}" if low_open else f">= {text(low)}"
    else:
        words = f"{'(' if low_open else '['}{text(low)}, {text(high)}]"

    def check(value, label, route):
        if (not _is_number(value) or (value <= low if low_open else value < low)
                or (high is not None and value > high)):
            raise ValueError(f"{label} must be a number {'in ' if high is not None else ''}{words} "
                             f"(vLLM's range), got {_short(value)}")
        return value
    return check


def _bool(value, label, route):
    if not isinstance(value, bool):
        raise ValueError(f"{label} must be true or false, got {_short(value)}")
    return value


def _stop(value, label, route):
    # StopParam (str | list[str] of at most VLLM_MAX_STOP_STRINGS); _verify_args: "stop cannot
    # contain an empty string"
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"{label} must be a non-empty string or a list of them")
    if len(value) > MAX_STOP_STRINGS:
        raise ValueError(f"{label} must be at most {MAX_STOP_STRINGS} strings (VLLM_MAX_STOP_STRINGS), "
                         f"got {len(value)}")
    return value


def _token_ids(value, label, route):
    # list[int]; _validate_stop_token_ids: each in [0, vocabulary size) (the size is the server's)
    if not isinstance(value, list) or not all(_is_int(t) and t >= 0 for t in value):
        raise ValueError(f"{label} must be a list of token ids (integers >= 0), got {_short(value)}")
    return value


def _logit_bias(value, label, route):
    # dict[str, float]; _validate_logit_bias: keys integer token ids in [0, vocabulary size);
    # no bound on the bias (vLLM takes 500)
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be an object of token id: bias, got {_short(value)}")
    for token, bias in value.items():
        if not (isinstance(token, str) and token.isdigit() and token.isascii()):
            raise ValueError(f"{label}: key {token!r} is not a token id (an integer >= 0 as a string)")
        if not _is_number(bias):
            raise ValueError(f"{label}: the bias of token {token} must be a number, got {_short(bias)}")
    return value


def _logprobs(value, label, route):
    if route == CHAT:
        # ChatCompletionRequest.logprobs: bool | None (the count is top_logprobs)
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be true or false on {ROUTES[CHAT]} (the count is 'top_logprobs'), "
                             f"got {_short(value)}")
        return value
    # CompletionRequest.logprobs: int | None; check_logprobs ("must be a positive value or -1") and
    # _validate_logprobs (at most max_logprobs; -1 is the whole vocabulary, over it)
    if not _is_int(value) or not 0 <= value <= MAX_LOGPROBS:
        raise ValueError(f"{label} must be an integer in [0, {MAX_LOGPROBS}] on {ROUTES[COMPLETIONS]} "
                         f"(vLLM's --max-logprobs), got {_short(value)}")
    return value


def _top_logprobs(value, label, route):
    # TopLogprobsParam (int); ChatCompletionRequest.check_logprobs and _validate_logprobs
    check_int(value, label, 0, MAX_LOGPROBS)
    return value


def _schema(value) -> bool:
    """A JSON schema as structured_outputs.json takes it: an object, or a string that parses to one
    (xgrammar: "Expecting object schema"; _validate_structured_outputs: not a blank string)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return False
    return isinstance(value, dict)


def _structured_outputs(value, label, route):
    # StructuredOutputsParams; __post_init__ (exactly one kind) and _validate_structured_outputs
    if not isinstance(value, dict):  # vLLM answers a string here with a 500
        raise ValueError(f"{label} must be an object with one of {', '.join(STRUCTURED_KINDS)}")
    unknown = sorted(set(value) - set(STRUCTURED_KINDS) - set(STRUCTURED_MODIFIERS))
    if unknown:
        raise ValueError(f"{label}: unknown key {unknown[0]!r}; known: "
                         f"{', '.join((*STRUCTURED_KINDS, *STRUCTURED_MODIFIERS))}")
    kinds = [k for k in STRUCTURED_KINDS if value.get(k) is not None]
    if len(kinds) != 1:
        raise ValueError(f"{label} must set exactly one of {', '.join(STRUCTURED_KINDS)}, got "
                         f"{', '.join(kinds) if kinds else 'none'}")
    kind = kinds[0]
    spec = value[kind]
    if kind == "json" and not _schema(spec):
        raise ValueError(f"{label}: 'json' must be a JSON schema (an object, or a string of one)")
    if kind == "regex" and not (isinstance(spec, str) and "\x00" not in spec):
        raise ValueError(f"{label}: 'regex' must be a string without NUL")
    if kind == "choice" and not (isinstance(spec, list) and spec and all(isinstance(c, str) for c in spec)):
        raise ValueError(f"{label}: 'choice' must be a non-empty list of strings")
    if kind == "grammar" and not (isinstance(spec, str) and spec.strip()):
        raise ValueError(f"{label}: 'grammar' must be a non-empty string")
    if kind == "json_object" and spec is not True:
        raise ValueError(f"{label}: 'json_object' must be true")
    for key, kind_of in STRUCTURED_MODIFIERS.items():
        if value.get(key) is not None and not isinstance(value[key], kind_of):
            raise ValueError(f"{label}: {key!r} must be a {'bool' if kind_of is bool else 'string'}")
    return value


def _response_format(value, label, route):
    # ResponseFormat (type text | json_object | json_schema); validate_response_format (json_schema
    # needs 'json_schema'); JsonSchemaResponseFormat (name: str, schema: dict; without a schema
    # vLLM finds no constraint and refuses)
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMAT_TYPES:
        raise ValueError(f"{label} must be an object whose 'type' is one of {', '.join(RESPONSE_FORMAT_TYPES)}")
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("schema"), dict)):
            raise ValueError(f"{label}: type json_schema needs 'json_schema': {{'name': a string, "
                             "'schema': an object}")
    return value


def _model(value, label, route):
    # model: str | None; a name the server serves (a LoRA adapter's included): the health check's
    if not isinstance(value, str) or not value:
        raise ValueError(f"{label} must be a non-empty string (a served model or LoRA name), got {_short(value)}")
    return value


def _object(value, label, route):
    # extra_body: as the openai client calls it, fields sent as they are (vLLM's models take
    # extra fields and ignore those they do not know)
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be an object, got {_short(value)}")
    return value


SP = "sampling_params.py SamplingParams._verify_args"

#: Every option, by name. ``rule`` says what vLLM 0.32 takes; the comments on the checks above
#: cite where.
OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("max_tokens", "integer", ">= 1 (" + SP + ")", BOTH, _int(1)),
    Option("max_completion_tokens", "integer", ">= 1; on chat it wins over max_tokens "
           "(ChatCompletionRequest.build_tok_params)", (CHAT,), _int(1)),
    Option("n", "integer", f"in [1, {MAX_N}] (VLLM_MAX_N_SEQUENCES; 1 when greedy)", BOTH, _int(1, MAX_N)),
    Option("seed", "integer", "int64 (the request's Field(ge, le))", BOTH, _int(*SEED_RANGE)),
    Option("temperature", "number", "in [0, 2] (" + SP + ")", BOTH, _number(*TEMPERATURE_RANGE)),
    Option("top_p", "number", "in (0, 1] (" + SP + ")", BOTH, _number(0, 1, low_open=True)),
    Option("stop", "string or list of strings", f"non-empty strings, at most {MAX_STOP_STRINGS} (StopParam)",
           BOTH, _stop),
    Option("top_k", "integer", "-1 or >= 0; 0 and -1 disable (" + SP + ")", BOTH, _int(-1)),
    Option("min_p", "number", "in [0, 1] (" + SP + ")", BOTH, _number(0, 1)),
    Option("repetition_penalty", "number", "> 0, finite (" + SP + ")", BOTH, _number(0, None, low_open=True)),
    Option("presence_penalty", "number", "in [-2, 2] (" + SP + ")", BOTH, _number(-2, 2)),
    Option("frequency_penalty", "number", "in [-2, 2] (" + SP + ")", BOTH, _number(-2, 2)),
    Option("min_tokens", "integer", ">= 0, <= max_tokens (" + SP + ")", BOTH, _int(0)),
    Option("ignore_eos", "bool", "true or false", BOTH, _bool),
    Option("stop_token_ids", "list of integers", "token ids >= 0, in the vocabulary (_validate_stop_token_ids)",
           BOTH, _token_ids),
    Option("include_stop_str_in_output", "bool", "true or false", BOTH, _bool),
    Option("skip_special_tokens", "bool", "true or false", BOTH, _bool),
    Option("logit_bias", "object", "token id (string) -> number; ids in the vocabulary (_validate_logit_bias)",
           BOTH, _logit_bias),
    Option("logprobs", "integer (completions) / bool (chat)",
           f"completions: in [0, {MAX_LOGPROBS}] (max_logprobs); chat: true or false", BOTH, _logprobs),
    Option("top_logprobs", "integer", f"in [0, {MAX_LOGPROBS}]; > 0 needs logprobs true (check_logprobs)",
           (CHAT,), _top_logprobs),
    Option("structured_outputs", "object", "exactly one of " + ", ".join(STRUCTURED_KINDS)
           + " (StructuredOutputsParams)", BOTH, _structured_outputs),
    Option("response_format", "object", "type text | json_object | json_schema (with name and schema)",
           BOTH, _response_format),
    Option("model", "string", "a name the server serves (a LoRA adapter's too)", BOTH, _model),
    Option("extra_body", "object", "passed through as it is", BOTH, _object),
)}


def known(route: str) -> list[str]:
    """The options ``route`` takes, in table order."""
    return [key for key, option in OPTIONS.items() if route in option.routes]


def validate(options: dict, route: str, name: Name = quoted) -> dict:
    """``options`` (a row's or the command line's) checked as vLLM checks them on ``route``
    (:data:`COMPLETIONS` or :data:`CHAT`), key by key and as a whole (:func:`conflict`); returns
    them without the ``None`` values, ``stop`` as a list. ValueError: one line naming the key."""
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}: one of {', '.join(ROUTES)}")
    out = {}
    for key, value in options.items():
        checked = check_option(key, value, route, name)
        if checked is not None:
            out[key] = checked
    why = conflict(out, route, name)
    if why:
        raise ValueError(why)
    return out


def check_option(key: str, value, route: str, name: Name = quoted):
    """``value`` of option ``key`` alone (not against the others: :func:`conflict`), checked as
    vLLM checks it on ``route``; returns it as sent (None as it is). ValueError: one line naming
    the key (an unknown key, or one ``route`` does not take, included)."""
    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}: one of {', '.join(ROUTES)}")
    option = OPTIONS.get(key)
    if option is None:
        raise ValueError(f"unknown option {name(key)}; known: {', '.join(known(route))}")
    if route not in option.routes:
        raise ValueError(f"{name(key)} is not an option of {ROUTES[route]} (only of "
                         f"{', '.join(ROUTES[r] for r in option.routes)})")
    return None if value is None else option.check(value, name(key), route)


def greedy_conflict(params: dict, name: Name = quoted) -> str | None:
    """Why vLLM would refuse greedy sampling (temperature 0; vLLM raises a temperature in
    (0, 0.01) to 0.01, which is not greedy) with more than one completion, else None
    (SamplingParams._verify_greedy_sampling: "n must be 1 when using greedy sampling")."""
    n = params.get("n", 1)
    if params.get("temperature") == 0 and n > 1:
        return f"{name('n')} must be 1 when using greedy sampling ({name('temperature')} 0), got {n}"
    return None


def output_limit_key(params: dict, route: str) -> str:
    """The option that bounds the answer's length: on chat ``max_completion_tokens`` when
    given (vLLM's chat serving takes it over ``max_tokens``), else ``max_tokens``."""
    if route == CHAT and params.get("max_completion_tokens") is not None:
        return "max_completion_tokens"
    return "max_tokens"


def conflict(params: dict, route: str, name: Name = quoted) -> str | None:
    """Why vLLM would refuse ``params`` (valid one by one) as a whole on ``route``, else None.
    For the options as sent: a row's over the command line's, ``name`` saying where each is from."""
    why = greedy_conflict(params, name)
    if why:
        return why
    limit = output_limit_key(params, route)
    low, high = params.get("min_tokens"), params.get(limit)
    if low is not None and high is not None and low > high:  # _verify_args
        return f"{name('min_tokens')} must be at most {name(limit)} ({high}), got {low}"
    if route == CHAT and params.get("top_logprobs", 0) > 0 and params.get("logprobs") is not True:
        # ChatCompletionRequest.check_logprobs
        return f"{name('top_logprobs')} needs {name('logprobs')} true"
    response_format = params.get("response_format")
    if params.get("structured_outputs") is not None and response_format and response_format["type"] != "text":
        # structured_outputs_from_response_format sets json_object / json on structured_outputs:
        # two kinds are refused, a json_schema over 'json' wins in silence
        return (f"{name('response_format')} {response_format['type']} and {name('structured_outputs')} "
                "are two structured outputs: use one")
    return None
