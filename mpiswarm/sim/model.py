"""The simulator's configuration and its pure models: deterministic text and step times.

Nothing here does I/O or keeps state, so tests (and the client's tests) can compute
every answer the simulator will give with :func:`expected_completion`.

Text model
    A completion is a run of words from :data:`WORDS` (one "token" per word, joined by
    single spaces). The number of words, 1..:data:`MAX_WORDS`, and the words themselves
    come from one BLAKE2b digest of ``(seed, j, prompt)``, so the natural length does not
    depend on ``max_tokens``. The text is cut to ``max_tokens`` words (finish reason
    ``length``), then at the first occurrence of any stop string (finish reason ``stop``).

Time model (continuous batching)
    Admitting prompts costs ``prompt_tokens / prefill_tps`` seconds in the step that
    admits them; a decode step costs ``decode_step_s * (1 + decode_step_growth * running)``.
    All times are multiplied by ``time_scale`` and divided by the endpoint's speed.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .pattern import grammar_example, regex_example

MAX_WORDS = 48
"""Longest natural answer, in words (tokens)."""

# 256 words, so one digest byte picks one word. A few are non-ASCII on purpose: clients
# must carry UTF-8 text (2-, 3- and 4-byte sequences) through to their output files.
WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is that it for on with as was at by from this be or are an not but all
    were when we there can more if no out so said what up its about into than them only
    other new some could time these two may then first any like now over such our man me
    even most made after also did many before must through back years where much your way
    well down should because each just those people how too little good very make world
    still own see men work long get here between both life being under never day same
    another know while last might us great old year off come since against go came right
    used take three himself few house use during without again place around however home
    small found thought went say part once general high upon school every does got left
    number course until always away something fact though water less public put think almost
    hand enough far took head yet system better set told nothing night end why called eyes
    find going look asked later knew point next city business give group toward young let
    room side social given present several order second possible rather per face among form
    often important things looked early white case become large big need four within felt
    along children saw best ever least power development light thing seemed family interest
    want members mind country area others done turned although café naïve über jalapeño
    façade smörgåsbord 東京 🙂
    """.split()
)
if len(WORDS) != 256 or len(set(WORDS)) != 256:  # one digest byte picks one word
    raise ImportError("mpiswarm.sim.model.WORDS must hold 256 distinct words")

#: 200s that do not answer every prompt of the call (what a proxy, a truncated body or a server
#: bug gives): the first choice missing, repeated, with an index past the last or without its
#: text (chat: its message); a body that is not JSON; JSON that is not a completion
BAD_REPLY_KINDS: tuple[str, ...] = ("missing-choice", "dup-choice", "bad-index", "no-text", "not-json",
                                    "not-completion")
FAULT_KINDS: tuple[str, ...] = ("500", "503", "429", "timeout", "drop") + BAD_REPLY_KINDS
"""Kinds ``error_kinds`` accepts: HTTP statuses, a call never answered, a dropped connection, and
the bad replies of :data:`BAD_REPLY_KINDS`. The default ``error_kinds`` is the first five."""

REASONING_MODES: tuple[str, ...] = ("none", "split", "only")
"""How chat answers carry reasoning: not at all; the first half of the words as reasoning and
the rest as content; everything as reasoning with ``content`` null (a thinking model stopped
by ``max_tokens`` before it answered)."""
REASONING_FIELDS: tuple[str, ...] = ("reasoning", "reasoning_content")
"""The message key vLLM's reasoning parsers use: ``reasoning`` (>= 0.11; 0.32 renames a
``reasoning_content`` to it), ``reasoning_content`` (older servers)."""
ERROR_SHAPES: tuple[str, ...] = ("nested", "flat")
"""How an error body looks: vLLM 0.32's ``{"error": {"message", "type", "param", "code"}}``
(``vllm/entrypoints/serve/engine/protocol.py``: ``ErrorResponse``), or older vLLM's flat
``{"object": "error", "message", "type", "param", "code"}``."""
CONTEXT_CHECKS: tuple[str, ...] = ("prompt", "total")
"""What must fit in ``max_model_len``: the prompt alone, ``max_tokens`` then clamped to what is
left (vLLM 0.32: ``renderers/params.py`` ``_token_len_check``, ``serve/utils/api_utils.py``
``get_max_tokens``); or the prompt plus ``max_tokens`` (older vLLM, "you requested … tokens")."""
#: vLLM 0.32's default VLLM_MAX_COMPLETION_PROMPTS (vllm/envs.py): the longest ``prompt`` list
DEFAULT_MAX_PROMPTS = 1024
#: vLLM 0.32's default VLLM_MAX_N_SEQUENCES (vllm/envs.py): the largest ``n``
MAX_N_SEQUENCES = 16384
#: vLLM's _SAMPLING_EPS (vllm/sampling_params.py): a temperature below it is greedy sampling
SAMPLING_EPS = 1e-5
#: vLLM's _MAX_TEMP (vllm/sampling_params.py): a temperature in (0, this) is raised to it
MIN_TEMPERATURE = 1e-2

FINISH_STOP = "stop"
FINISH_LENGTH = "length"

_HEADER_NO_SEED = b"mpiswarm-sim\x00-\x00"


@dataclass
class SimConfig:
    """Everything that shapes a simulated endpoint; one field per command-line option.

    Per-endpoint variations: ``speeds`` (one speed per endpoint, overriding ``speed``)
    and ``fault_endpoints`` (indices the fault options apply to; ``None`` = all).
    """

    model: str = "sim-model"  # listed by /v1/models; a request naming another model is 404
    lora_modules: tuple[str, ...] = ()  # LoRA adapters served beside it (cards with a parent)
    skip_model_name_validation: bool = False  # any model name is served (vLLM's VLLM_SKIP_MODEL_NAME_VALIDATION)
    max_model_len: int = 4096  # prompt tokens + max_tokens must fit, else HTTP 400
    max_num_seqs: int = 256  # sequences decoded together; the rest wait
    prefill_tps: float = 20000.0  # prompt tokens prefilled per second
    decode_step_s: float = 0.01  # seconds per decode step of an empty batch
    decode_step_growth: float = 0.002  # step = decode_step_s * (1 + growth * running)
    time_scale: float = 1.0  # multiplies simulated times; 0: answer at once, no scheduler
    speed: float = 1.0  # throughput multiplier (0.25: a quarter-speed endpoint)
    speeds: tuple[float, ...] | None = None  # one speed per endpoint, overrides speed
    shuffle_choices: bool = False  # return choices in random order (indices stay right)
    error_rate: float = 0.0  # fraction of completion calls that fail
    error_kinds: tuple[str, ...] = FAULT_KINDS[:5]  # how they fail, drawn uniformly
    fault_seed: int = 0  # seed of fault draws and shuffles
    crash_after: int | None = None  # after this many calls: unhealthy, calls dropped
    slow_start: float = 0.0  # real seconds of 503 after listening starts
    jitter: float = 0.0  # real seconds, a random 0..jitter delay per call
    fault_endpoints: tuple[int, ...] | None = None  # endpoints faults apply to (None: all)
    advertise_max_model_len: bool = True  # False: /v1/models cards without max_model_len
    reasoning: str = "none"  # chat answers of a reasoning model: none, split, only (see split_reasoning)
    reasoning_field: str = "reasoning"  # the message key: reasoning (vLLM 0.32) or reasoning_content (older)
    error_shape: str = "nested"  # nested (vLLM 0.32) or flat (older vLLM): see ERROR_SHAPES
    max_prompts_per_call: int = DEFAULT_MAX_PROMPTS  # longer prompt lists are 400; 0: no cap (older vLLM)
    context_check: str = "prompt"  # prompt (vLLM 0.32) or total (older vLLM): see CONTEXT_CHECKS
    nul_answers: bool = False  # every answer holds a U+0000, as real models' sometimes do (see expected_completion)
    chat_batch: bool = True  # serve POST /v1/chat/completions/batch (vLLM >= 0.32); False: 404, as older servers
    answer_bytes: int = 0  # answers repeated to at least this many UTF-8 bytes (long answers; see expected_completion)

    def __post_init__(self) -> None:
        _require(self.max_model_len >= 1, "max_model_len must be >= 1")
        _require(self.max_num_seqs >= 1, "max_num_seqs must be >= 1")
        _require(self.prefill_tps > 0, "prefill_tps must be > 0")
        _require(self.decode_step_s >= 0 and self.decode_step_growth >= 0,
                 "decode_step_s and decode_step_growth must be >= 0")
        _require(self.time_scale >= 0, "time_scale must be >= 0")
        if self.speeds is not None:
            self.speeds = tuple(float(s) for s in self.speeds)
        _require(all(s > 0 for s in (self.speed, *(self.speeds or ()))), "speeds must be > 0")
        _require(0.0 <= self.error_rate <= 1.0, "error_rate must be within [0, 1]")
        self.error_kinds = tuple(self.error_kinds)
        _require(bool(self.error_kinds), "error_kinds must not be empty")
        bad = [k for k in self.error_kinds if k not in FAULT_KINDS]
        _require(not bad, f"unknown error kinds {bad}; choose from {', '.join(FAULT_KINDS)}")
        _require(self.crash_after is None or self.crash_after >= 0, "crash_after must be >= 0")
        _require(self.slow_start >= 0 and self.jitter >= 0, "slow_start and jitter must be >= 0")
        if self.fault_endpoints is not None:
            self.fault_endpoints = tuple(int(i) for i in self.fault_endpoints)
        _require(self.reasoning in REASONING_MODES,
                 f"reasoning must be one of {', '.join(REASONING_MODES)}")
        _require(self.reasoning_field in REASONING_FIELDS,
                 f"reasoning_field must be one of {', '.join(REASONING_FIELDS)}")
        _require(self.error_shape in ERROR_SHAPES, f"error_shape must be one of {', '.join(ERROR_SHAPES)}")
        _require(self.context_check in CONTEXT_CHECKS,
                 f"context_check must be one of {', '.join(CONTEXT_CHECKS)}")
        _require(self.max_prompts_per_call >= 0, "max_prompts_per_call must be >= 0")
        self.lora_modules = tuple(self.lora_modules)

    def check_count(self, count: int) -> None:
        """Raise ``ValueError`` unless the per-endpoint options fit ``count`` endpoints."""
        _require(count >= 1, "count must be >= 1")
        if self.speeds is not None:
            _require(len(self.speeds) == count,
                     f"{len(self.speeds)} speeds given for {count} endpoints")
        bad = [i for i in self.fault_endpoints or () if not 0 <= i < count]
        _require(not bad, f"fault endpoint indices {bad} out of range for {count} endpoints")

    def speed_of(self, index: int) -> float:
        """Throughput multiplier of endpoint ``index``."""
        return self.speeds[index] if self.speeds is not None else self.speed

    def faults_apply_to(self, index: int) -> bool:
        """Whether the fault options act on endpoint ``index``."""
        return self.fault_endpoints is None or index in self.fault_endpoints


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def count_tokens(text: str) -> int:
    """The simulator's prompt-token estimate: ``ceil(utf8_bytes / 4)``, at least 1.

    Used for ``usage.prompt_tokens``, the context-length check and prefill time.
    """
    return max(1, (len(text.encode("utf-8", "surrogatepass")) + 3) // 4)


def chat_prompt(messages: Iterable[dict]) -> str:
    """The prompt a chat request stands for: its messages' contents joined by ``"\\n"``.

    A content may be a string, ``None``, or a list of parts, whose ``{"type": "text"}``
    parts count (joined without separator). Roles are ignored.
    """
    return "\n".join(_content_text(m.get("content")) for m in messages)


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    raise ValueError("message content must be a string, null or a list of parts")


def natural_words(prompt: str, *, seed: int | None = None, j: int = 0) -> list[str]:
    """The answer's words before ``max_tokens`` and stop strings apply (1..MAX_WORDS)."""
    if seed is None:
        header = _HEADER_NO_SEED + b"%d\x00" % j
    else:
        header = b"mpiswarm-sim\x00%d\x00%d\x00" % (seed, j)
    h = hashlib.blake2b(header, digest_size=64)
    h.update(prompt.encode("utf-8", "surrogatepass"))
    digest = h.digest()
    n_words = 1 + (digest[0] << 8 | digest[1]) % MAX_WORDS
    return [WORDS[b] for b in digest[2 : 2 + n_words]]


def expected_completion(
    prompt: str,
    *,
    seed: int | None = None,
    j: int = 0,
    max_tokens: int | None = 16,
    stop: str | Sequence[str] | None = None,
    nul: bool = False,
    min_bytes: int = 0,
) -> tuple[str, str, int]:
    """The simulator's answer to ``prompt``: ``(text, finish_reason, completion_tokens)``.

    ``j`` is the choice within ``n``; ``max_tokens=None`` means no limit (chat requests
    without ``max_tokens``). ``finish_reason`` is ``"length"`` when the answer was cut to
    ``max_tokens`` words, else ``"stop"``. A stop string cuts the text before its first
    occurrence (``"stop"``); the tokens counted then run to the word that completed it.
    ``nul`` (``SimConfig.nul_answers``): the first space of the text becomes U+0000 (a NUL
    ends a text of one word), as a real model's answer may hold one. ``min_bytes``
    (``SimConfig.answer_bytes``): the text is repeated, a space between, until it holds at least
    that many UTF-8 bytes — the long answers of reasoning models (10–30 KB) without their time.
    """
    text, finish, n_tokens = _completion(prompt, seed, j, max_tokens, stop)
    if text and min_bytes:
        copies = -(-(min_bytes + 1) // (len(text.encode("utf-8")) + 1))  # n copies: n (bytes + 1) - 1
        text = " ".join([text] * max(1, copies))
    if nul:
        text = text.replace(" ", "\x00", 1) if " " in text else text + "\x00"
    return text, finish, n_tokens


def structured_spec(body: dict) -> tuple[str, object] | None:
    """The structured output a request asks for, as ``(kind, spec)``: vLLM's
    ``structured_outputs`` (``choice``, ``json``, ``json_object``, ``regex``, ``grammar``) or
    OpenAI's ``response_format`` (``json_object``; ``json_schema`` as ``json``); None for free text."""
    spec = body.get("structured_outputs")
    if isinstance(spec, dict):
        for kind in ("choice", "json", "json_object", "regex", "grammar"):
            if spec.get(kind) not in (None, False):
                return kind, spec[kind]
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            return "json_object", True
        if fmt.get("type") == "json_schema":
            return "json", (fmt.get("json_schema") or {}).get("schema") or {}
    return None


def structured_answer(kind: str, spec, prompt: str, j: int = 0) -> str:
    """The simulator's answer held to a structured output: one of the ``choice``s, a JSON
    document valid for the ``json`` schema (objects with their required and listed properties,
    strings, numbers, integers, booleans, null, arrays, enums and consts; ``$ref``, ``anyOf``
    and the like take their first branch), ``{}`` for ``json_object``; deterministic per
    prompt and choice; for ``regex`` and ``grammar`` a string they match, of the subsets
    :mod:`mpiswarm.sim.pattern` generates (ValueError naming what it does not: the server answers
    400 saying so)."""
    digest = hashlib.blake2b(f"{j}:{prompt}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    if kind == "choice":
        return str(spec[digest[0] % len(spec)])
    if kind == "json_object":
        return "{}"
    if kind == "json":
        schema = json.loads(spec) if isinstance(spec, str) else spec
        return json.dumps(_from_schema(schema, digest, 0), ensure_ascii=False, separators=(",", ":"))
    if kind == "regex":
        return regex_example(spec, digest)
    if kind == "grammar":
        return grammar_example(spec, digest)
    raise ValueError(f"the simulator does not generate '{kind}' structured outputs")


def _from_schema(schema, digest: bytes, depth: int):
    """A value valid for ``schema`` (a small JSON Schema subset, see :func:`structured_answer`)."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    pick = digest[depth % len(digest)]
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][pick % len(schema["enum"])]
    for branch in ("anyOf", "oneOf", "allOf"):
        if schema.get(branch):
            return _from_schema(schema[branch][0], digest, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _from_schema(sub, digest, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [_from_schema(schema.get("items") or {}, digest, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        return low + pick % max(1, int(schema.get("maximum", low + 100)) - low + 1)
    if kind == "number":
        return float(schema.get("minimum", 0)) + pick / 4
    if kind == "boolean":
        return bool(pick & 1)
    if kind == "null":
        return None
    return WORDS[pick % len(WORDS)]


def expected_logprobs(text: str, chat: bool, top: int, greedy: bool = True) -> dict:
    """The simulator's logprobs of an answer ``text``, in vLLM 0.32's shapes: its tokens are
    its words (after the first, with their leading space), each with a logprob and the ``top``
    most likely other words. Greedy (temperature 0), the chosen token is the most likely; sampled,
    the ``top`` alternatives are each more likely than it, as a model's usually are.

    As vLLM gives them (``entrypoints/openai/*/serving.py``; the engine puts the sampled token
    first, then the top ones): completions (``logprobs: top``) ``{text_offset, token_logprobs,
    tokens, top_logprobs}``, each ``top_logprobs`` entry the sampled token with the ``top`` most
    likely — ``top`` entries greedy (it is one of them), ``top + 1`` sampled, 1 for ``top`` 0;
    chat (``logprobs: true, top_logprobs: top``) ``{content: [{token, logprob, bytes,
    top_logprobs}]}`` with the first ``top`` of those. The same text gives the same logprobs,
    alone or in a list."""
    words = text.split(" ") if text else []
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    chosen, ranked = [], []
    for position, token in enumerate(tokens):
        digest = hashlib.blake2b(f"{position}:{token}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        logprob = -round(0.25 + digest[0] / 64, 4)
        others = list(dict.fromkeys(" " + WORDS[b] for b in digest[1:] if " " + WORDS[b] != token))
        if greedy:  # the sampled token first, as the most likely, then the others below it
            ranking = [(token, logprob)] + [(alt, round(logprob - 0.5 * (k + 1), 4)) for k, alt in enumerate(others)]
        else:  # the sampled token first, then the most likely, all above it
            ranking = [(token, logprob)] + [(alt, round(logprob + 0.5 * (len(others) - k) / len(others), 4))
                                            for k, alt in enumerate(others)]
        chosen.append(logprob)
        ranked.append(ranking)
    if chat:
        def entry(token, logprob):
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}
        return {"content": [{**entry(t, lp), "top_logprobs": [entry(a, b) for a, b in ranking[:top]]}
                            for t, lp, ranking in zip(tokens, chosen, ranked)]}
    count = max(top, 1) if greedy else top + 1
    return {"text_offset": offsets, "token_logprobs": chosen, "tokens": tokens,
            "top_logprobs": [dict(ranking[:count]) for ranking in ranked]}


def _completion(prompt: str, seed: int | None, j: int, max_tokens: int | None,
                stop: str | Sequence[str] | None) -> tuple[str, str, int]:
    words = natural_words(prompt, seed=seed, j=j)
    finish = FINISH_STOP
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
        finish = FINISH_LENGTH
    text = " ".join(words)
    if stop:
        cut = _first_stop(text, (stop,) if isinstance(stop, str) else stop)
        if cut is not None:
            start, end = cut
            return text[:start], FINISH_STOP, text.count(" ", 0, end) + 1
    return text, finish, len(words)


def _first_stop(text: str, stops: Iterable[str]) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest stop-string match in ``text``, if any."""
    best = None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0] or (i == best[0] and i + len(s) < best[1])):
            best = (i, i + len(s))
    return best


#: a simulated token covers at most 4 UTF-8 bytes, so at most 4 characters (vLLM's
#: ``tokenizer.max_chars_per_token``, which bounds a prompt's characters before tokenizing)
MAX_CHARS_PER_TOKEN = 4


def prompt_context_error(text: str, max_model_len: int) -> tuple[str, str] | None:
    """``(message, param)`` of vLLM 0.32's 400 (the message is the ``str`` of its
    ``VLLMValidationError``, parameter and value appended) when the prompt ``text`` alone
    exceeds ``max_model_len``, else None: first the character bound (``vllm/renderers/params.py`` ``_text_len_check``), then the token count
    of a prompt tokenized with truncation at ``max_model_len + 1`` tokens (``_token_len_check``,
    hence "at least")."""
    limit = max_model_len * MAX_CHARS_PER_TOKEN
    if len(text) > limit:
        return (f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
                f"contains {len(text)} characters (more than {limit} characters, which is the upper bound "
                f"for {max_model_len} input tokens). Please reduce the length of the input prompt. "
                f"(parameter=input_text, value={len(text)})", "input_text")
    if count_tokens(text) <= max_model_len:
        return None
    tokens = max_model_len + 1  # what a tokenizer truncating there counts
    return (f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
            f"contains at least {tokens} input tokens, which exceeds this limit even without any output "
            f"tokens. Please reduce the length of the input prompt. (parameter=input_tokens, value={tokens})",
            "input_tokens")


def sampling_error(n: int, temperature: float | None, top_p: float | None, max_tokens: int,
                   stop: Sequence[str], min_tokens: int = 0) -> tuple[str, str | None] | None:
    """``(message, param)`` of the 400 vLLM 0.32 answers for these sampling values, else None.

    The checks and their order are ``SamplingParams._verify_args`` then
    ``_verify_greedy_sampling`` (``vllm/sampling_params.py``), for the options mpiswarm sends;
    ``temperature``/``top_p`` None take the completion defaults (1.0), and ``max_tokens`` is
    the request's after ``get_max_tokens`` clamped it to the context. The message is the
    ``str`` of vLLM's ``VLLMValidationError`` (parameter and value appended when it names them).
    """
    def named(message: str, param: str, value) -> tuple[str, str]:
        return f"{message} (parameter={param}, value={value})", param

    if n < 1:
        return f"n must be at least 1, got {n}.", None
    if n > MAX_N_SEQUENCES:
        return (f"n must be at most {MAX_N_SEQUENCES}, got {n}. To increase this limit, set the "
                "VLLM_MAX_N_SEQUENCES environment variable."), None
    t = 1.0 if temperature is None else float(temperature)
    p = 1.0 if top_p is None else float(top_p)
    if 0.0 < t < MIN_TEMPERATURE:  # SamplingParams.__post_init__ raises it (with a warning): not greedy
        t = MIN_TEMPERATURE
    if not math.isfinite(t):
        return named(f"temperature must be a finite number, got {t}.", "temperature", t)
    if t < 0.0:
        return named(f"temperature must be non-negative, got {t}.", "temperature", t)
    if t > 2.0:
        return named(f"temperature must be in [0, 2], got {t}.", "temperature", t)
    if not 0.0 < p <= 1.0:
        return named(f"top_p must be in (0, 1], got {p}.", "top_p", p)
    if max_tokens < 1:
        return named(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens", max_tokens)
    if min_tokens > max_tokens:  # against max_tokens as the context clamped it
        return f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.", None
    if any(not s for s in stop):
        return "stop cannot contain an empty string.", None
    if t < SAMPLING_EPS and n > 1:
        return f"n must be 1 when using greedy sampling, got {n}.", None
    return None


def context_error(prompt_tokens: int, max_tokens: int, max_model_len: int) -> str | None:
    """Older vLLM's message when a prompt plus ``max_tokens`` exceeds the context, else
    ``None`` (``SimConfig.context_check="total"``)."""
    requested = prompt_tokens + max_tokens
    if requested <= max_model_len:
        return None
    return (
        f"This model's maximum context length is {max_model_len} tokens. However, you "
        f"requested {requested} tokens ({prompt_tokens} in the messages, {max_tokens} in "
        f"the completion). Please reduce the length of the messages or completion."
    )


def prefill_seconds(prompt_tokens: int, config: SimConfig, speed: float) -> float:
    """Simulated time to prefill ``prompt_tokens`` tokens on an endpoint of ``speed``."""
    return prompt_tokens / config.prefill_tps * config.time_scale / speed


def decode_step_seconds(running: int, config: SimConfig, speed: float) -> float:
    """Simulated time of one decode step with ``running`` sequences in the batch."""
    base = config.decode_step_s * (1.0 + config.decode_step_growth * running)
    return base * config.time_scale / speed


def split_reasoning(text: str, mode: str) -> tuple[str | None, str | None]:
    """``(reasoning, content)`` of a chat answer ``text`` under reasoning ``mode`` (see
    :data:`REASONING_MODES`): ``split`` gives the first ``ceil(words / 2)`` words to the
    reasoning and the rest (None if nothing is left) to the content; ``only`` gives all to the
    reasoning and None to the content; ``none`` returns ``(None, text)``."""
    if mode == "none":
        return None, text
    if mode == "only":
        return text, None
    words = text.split(" ")
    half = (len(words) + 1) // 2
    return " ".join(words[:half]), " ".join(words[half:]) or None
