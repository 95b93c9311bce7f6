"""One simulated endpoint's HTTP handlers: vLLM 0.32's routes, their checks and errors.

:class:`Endpoint` is one simulated vLLM server, with its own engine
(:mod:`mpiswarm.sim.engine`), fault policy, metrics and counters
(:mod:`mpiswarm.sim.metrics`); :func:`error_response` and :class:`BadRequest` give vLLM's error
bodies, and the helpers below the class parse a request's body as vLLM does.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import time
import uuid

from aiohttp import web

from ..options import CHAT, COMPLETIONS, OPTIONS
from .engine import Engine, EngineStopped
from .faults import CRASHED, STARTING, FaultPolicy, spoil_reply
from .metrics import EndpointStats, Metrics
from .model import (
    BAD_REPLY_KINDS,
    SAMPLING_EPS,
    SimConfig,
    context_error,
    count_tokens,
    expected_logprobs,
    structured_answer,
    structured_spec,
    prompt_context_error,
    sampling_error,
    chat_prompt,
    expected_completion,
    split_reasoning,
)
from .refusals import option_refusal, validation_error

CLIENT_MAX_SIZE = 1 << 30  # request bodies: 10^5 long prompts must fit, as with vLLM

_dumps = functools.partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


class BadRequest(ValueError):
    """A request the endpoint refuses: HTTP ``status`` with vLLM's error ``err_type`` and
    ``param`` (a ``VLLMValidationError`` is 400 ``BadRequestError``, a ``VLLMNotFoundError``
    404 ``NotFoundError``: ``vllm/entrypoints/serve/exception_handling/error_response.py``)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 err_type: str = "BadRequestError"):
        super().__init__(message)
        self.param = param
        self.status = status
        self.err_type = err_type


def error_response(status: int, message: str, err_type: str = "BadRequestError",
                   headers: dict | None = None, *, param: str | None = None,
                   shape: str = "nested") -> web.Response:
    """A vLLM error body: ``{"error": {"message", "type", "param", "code"}}`` (vLLM 0.32's
    ``ErrorResponse``), or with ``shape="flat"`` older vLLM's ``{"object": "error", "message",
    "type", "param", "code"}``."""
    info = {"message": message, "type": err_type, "param": param, "code": status}
    body = {"error": info} if shape == "nested" else {"object": "error", **info}
    return web.json_response(body, status=status, headers=headers, dumps=_dumps)


def _bad_body(kind: str) -> web.Response:
    """A 200 that is no completion at all: a proxy's HTML page, or JSON of something else."""
    if kind == "not-json":
        return web.Response(status=200, text="<html><body>502 Bad Gateway (simulated proxy)</body></html>",
                            content_type="text/html")
    return web.json_response({"object": "list", "data": []})


_INJECTED = {
    "500": (500, "Simulated internal server error.", "InternalServerError"),
    "503": (503, "Simulated service unavailable.", "ServiceUnavailableError"),
    "429": (429, "Simulated rate limit: too many requests.", "RateLimitError"),
}


class Endpoint:
    """One simulated vLLM server: its routes, engine, faults and counters."""

    def __init__(self, config: SimConfig, index: int = 0):
        self.config = config
        self.index = index
        self.speed = config.speed_of(index)
        self.faults = FaultPolicy(config, index)
        self.metrics = Metrics(config.model)
        self.stats = EndpointStats()
        self.engine = Engine(config, self.speed, self.metrics) if config.time_scale > 0 else None
        self._shuffle = random.Random(f"{config.fault_seed}:{index}:shuffle")
        self._closing: asyncio.Event | None = None

    def build_app(self) -> web.Application:
        """The aiohttp application serving this endpoint."""
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        if self.config.chat_batch:  # vLLM >= 0.32; older servers (and llama.cpp) answer 404
            app.router.add_post("/v1/chat/completions/batch", self.chat_completions_batch)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    def snapshot(self) -> dict:
        """Counters of this endpoint, plus its engine's current state."""
        out = self.stats.snapshot()
        out.update(
            index=self.index,
            speed=self.speed,
            healthy=self.faults.healthy,
            running=self.engine.running if self.engine else 0,
            waiting=self.engine.waiting if self.engine else 0,
            max_running=self.engine.max_running if self.engine else 0,
        )
        return out

    async def _on_startup(self, app: web.Application) -> None:
        self._closing = asyncio.Event()
        if self.engine:
            self.engine.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        self._closing.set()  # releases "timeout" calls and jitter waits
        if self.engine:
            await self.engine.stop()

    # -- simple routes

    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: 200 when serving, 503 while slow-starting or after a crash."""
        self.metrics.health_checks += 1
        return web.Response(status=200 if self.faults.healthy else 503)

    def _error(self, status: int, message: str, err_type: str = "BadRequestError", headers: dict | None = None,
               param: str | None = None) -> web.Response:
        return error_response(status, message, err_type, headers, param=param, shape=self.config.error_shape)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models`` as vLLM 0.32 lists them (``vllm/entrypoints/openai/models/serving.py``
        ``show_available_models``): the base model's card with its ``max_model_len`` and ``root``,
        then one card per LoRA adapter with the base model as its ``parent``."""
        if self.faults.starting:
            return self._error(503, "The server is starting up.", "ServiceUnavailableError")
        c = self.config
        base = _model_card(c.model, c.model, None, c.max_model_len if c.advertise_max_model_len else None)
        if not c.advertise_max_model_len:
            del base["max_model_len"]
        cards = [base] + [_model_card(name, name, c.model, None) for name in c.lora_modules]
        return web.json_response({"object": "list", "data": cards}, dumps=_dumps)

    def _check_model(self, body: dict) -> str:
        """The model name a reply carries; 404 as vLLM 0.32 when the request names a model it
        does not serve (``vllm/entrypoints/serve/engine/serving.py`` ``_check_model``)."""
        c = self.config
        model = body.get("model")
        if model in c.lora_modules:
            return model
        if model and model != c.model and not c.skip_model_name_validation:
            raise BadRequest(f"The model `{model}` does not exist. Valid aliases: {c.model}.", param="model",
                             status=404, err_type="NotFoundError")
        return c.model

    async def tokenize(self, request: web.Request) -> web.Response:
        """``POST /tokenize`` (vLLM's): ``{"prompt": text}`` → its ``count`` in the simulator's
        tokens (4 UTF-8 bytes each) and the token ids (the bytes, 4 at a time); ``token_strs``
        as vLLM 0.32 answers it (null unless ``return_token_strs``)."""
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "body is not JSON")
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return self._error(400, "'prompt' must be a string")
        try:
            self._check_model(body)
        except BadRequest as exc:
            return self._error(exc.status, str(exc), exc.err_type, param=exc.param)
        data = text.encode("utf-8", "surrogatepass")
        tokens = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)] or [0]
        strs = [data[i:i + 4].decode("utf-8", "replace") for i in range(0, len(data), 4)] or [""]
        return web.json_response({"count": count_tokens(text), "max_model_len": self.config.max_model_len,
                                  "tokens": tokens,
                                  "token_strs": strs if body.get("return_token_strs") else None},
                                 dumps=_dumps)

    async def metrics_page(self, request: web.Request) -> web.Response:
        """``GET /metrics`` in Prometheus text format."""
        engine = self.engine
        text = self.metrics.render(engine.running if engine else 0,
                                   engine.waiting if engine else 0,
                                   engine.kv_usage() if engine else 0.0)
        return web.Response(body=text.encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # -- completion routes

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions`` (prompt: a string or a list of strings)."""
        return await self._serve_call(request, self._answer_completions)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``; the prompt is ``chat_prompt(messages)``."""
        return await self._serve_call(request, self._answer_chat)

    async def chat_completions_batch(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions/batch`` (vLLM 0.32: ``BatchChatCompletionRequest``):
        ``messages`` a list of conversations, one choice a conversation, ``n`` must be 1."""
        return await self._serve_call(request, self._answer_chat_batch)

    async def _serve_call(self, request: web.Request, answer) -> web.StreamResponse:
        """Faults first, then parse the body and answer it."""
        self.stats.http_requests += 1
        self.metrics.http_requests += 1
        action = self.faults.on_call()
        if action.kind == STARTING:
            self.stats.rejected_starting += 1
            return self._error(503, "The server is starting up.", "ServiceUnavailableError")
        if action.kind == CRASHED:
            self.stats.dropped_crashed += 1
            return self._drop(request)
        if action.delay:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), action.delay)
        if action.kind is not None:
            self.stats.faults[action.kind] += 1
            self.metrics.faults_injected += 1
            if action.kind in ("not-json", "not-completion"):
                return _bad_body(action.kind)
            if action.kind not in BAD_REPLY_KINDS:
                return await self._inject(request, action.kind)
        started = time.monotonic()
        try:
            body = await request.json()
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            body = exc
        try:
            if not isinstance(body, dict):
                raise BadRequest(f"Invalid JSON body: {body}" if isinstance(body, ValueError)
                                 else "The request body must be a JSON object.")
            response = await answer(body, started)
        except BadRequest as exc:
            if exc.status == 400:
                self.stats.bad_requests += 1
            else:
                self.stats.not_found += 1
            return self._error(exc.status, str(exc), exc.err_type, param=exc.param)
        except EngineStopped:
            return self._drop(request)
        self.stats.responses_ok += 1
        if action.kind in BAD_REPLY_KINDS:  # answered, then spoiled on its way out
            return web.json_response(spoil_reply(json.loads(response.body), action.kind))
        return response

    async def _inject(self, request: web.Request, kind: str) -> web.StreamResponse:
        if kind in _INJECTED:
            status, message, err_type = _INJECTED[kind]
            headers = {"Retry-After": "1"} if status == 429 else None
            return self._error(status, message, err_type, headers)
        if kind == "timeout":  # hold the call until the client gives up or we shut down
            await self._closing.wait()
        return self._drop(request)

    @staticmethod
    def _drop(request: web.Request) -> web.Response:
        """Close the connection without answering (the response is never sent)."""
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    async def _answer_completions(self, body: dict, started: float) -> web.Response:
        # In vLLM 0.32's order: the request body (CompletionRequest's validators), the model,
        # each prompt's length, then each prompt's SamplingParams.
        prompts = _prompts(body.get("prompt"))
        cap = self.config.max_prompts_per_call
        if cap and len(prompts) > cap:  # CompletionRequest.validate_prompt_list_length
            raise BadRequest(f"prompt list length {len(prompts)} exceeds the maximum allowed count of {cap}. "
                             "To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS environment variable. "
                             "(parameter=prompt)", param="prompt")
        model, prompt_tokens, answers = await self._sample(prompts, body, _int_param(body, "max_tokens", 16), started)
        top = body.get("logprobs")
        choices = [{"index": k, "text": text, "finish_reason": finish,
                    "logprobs": None if top is None else expected_logprobs(text, False, int(top), _greedy(body)),
                    "stop_reason": None, "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None,
                    "routed_experts": None} for k, (text, finish, _) in enumerate(answers)]
        return self._reply("cmpl-", "text_completion", model, choices, prompt_tokens, answers)

    def _fit(self, prompts: list[str], prompt_tokens: list[int], max_tokens: int | None, body: dict, n: int,
             stop: list[str]) -> list[int]:
        """Each prompt's ``max_tokens`` after the context check, or the 400 vLLM answers.

        ``context_check="prompt"`` (vLLM 0.32): a prompt longer than ``max_model_len`` fails
        the whole request, ``max_tokens`` (None: no limit) is clamped to what the context leaves
        (``get_max_tokens``), then every prompt's sampling is checked (``sampling_error``).
        ``"total"`` (older vLLM): prompt plus ``max_tokens`` must fit."""
        length = self.config.max_model_len
        if self.config.context_check == "total":
            self._check_context(prompt_tokens, 1 if max_tokens is None else max_tokens)
            limits = [length - t if max_tokens is None else max_tokens for t in prompt_tokens]
        else:
            refused = next(filter(None, (prompt_context_error(p, length) for p in prompts)), None)
            if refused is not None:
                raise BadRequest(*refused)
            limits = [length - t if max_tokens is None else min(max_tokens, length - t) for t in prompt_tokens]
        temperature, top_p = _number_param(body, "temperature"), _number_param(body, "top_p")
        for limit in limits:
            refused = sampling_error(n, temperature, top_p, limit, stop, _int_param(body, "min_tokens", 0))
            if refused is not None:
                raise BadRequest(*refused)
        return limits

    async def _answer_chat(self, body: dict, started: float) -> web.Response:
        return await self._answer_conversations([_conversation(body.get("messages"))], body, started)

    async def _answer_chat_batch(self, body: dict, started: float) -> web.Response:
        conversations = body.get("messages")
        _check_conversations(conversations)
        n = body.get("n", 1)
        if n is not None and n != 1:  # BatchChatCompletionRequest.check_batch_mode
            raise BadRequest(f"Batch chat completions do not support `n > 1`. Please set `n` to 1. "
                             f"(parameter=n, value={n})", param="n")
        return await self._answer_conversations([_conversation(c) for c in conversations], body, started)

    async def _answer_conversations(self, conversations: list[list], body: dict, started: float) -> web.Response:
        """One choice a conversation (``n`` of them for one), each the answer it gets alone."""
        try:
            prompts = [chat_prompt(messages) for messages in conversations]
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        max_tokens = _int_param(body, "max_completion_tokens", None)
        if max_tokens is None:  # without a limit, like vLLM: whatever the context leaves
            max_tokens = _int_param(body, "max_tokens", None)
        model, prompt_tokens, answers = await self._sample(prompts, body, max_tokens, started, CHAT)
        top = body.get("top_logprobs") or 0
        choices = [{"index": k, "message": self._message(text), "finish_reason": finish,
                    "logprobs": expected_logprobs(text, True, int(top), _greedy(body)) if body.get("logprobs") else None,
                    "stop_reason": None, "token_ids": None, "routed_experts": None}
                   for k, (text, finish, _) in enumerate(answers)]
        return self._reply("chatcmpl-", "chat.completion", model, choices, prompt_tokens, answers)

    async def _sample(self, prompts: list[str], body: dict, max_tokens: int | None, started: float,
                      route: str = COMPLETIONS):
        """``(model, prompt tokens, answers)`` of a call, in vLLM 0.32's order of checks (the
        options beyond the six the simulator words as vLLM does, by the table of
        :mod:`mpiswarm.options`; the model, each prompt's length, each prompt's sampling), its
        time spent."""
        others = {k: v for k, v in body.items() if k in OPTIONS and k not in _WORDED_OPTIONS}
        refused = option_refusal(others, route)
        if refused is not None:
            raise BadRequest(str(refused), param=refused.param, err_type=refused.err_type)
        n, seed, stop = _sampling_params(body)
        model = self._check_model(body)
        self.metrics.prompts_received += len(prompts)
        prompt_tokens = [count_tokens(p) for p in prompts]
        limits = self._fit(prompts, prompt_tokens, max_tokens, body, n, stop)
        answers = self._answers(prompts, limits, body, n, seed, stop)
        await self._generate(prompt_tokens, answers, n, started)
        return model, prompt_tokens, answers

    def _answers(self, prompts: list[str], limits: list[int], body: dict, n: int, seed, stop) -> list[tuple]:
        """``(text, finish_reason, tokens)`` of every choice (``n`` a prompt): the model's
        answer, or one held to the structured output the request asks for."""
        structured = structured_spec(body)
        if structured is not None:
            try:
                texts = [structured_answer(*structured, p, j) for p in prompts for j in range(n)]
            except ValueError as exc:
                raise BadRequest(str(exc), param="structured_outputs") from None
            return [(text, "stop", max(1, count_tokens(text))) for text in texts]
        return [expected_completion(p, seed=seed, j=j, max_tokens=limit, stop=stop, nul=self.config.nul_answers,
                                    min_bytes=self.config.answer_bytes)
                for p, limit in zip(prompts, limits) for j in range(n)]

    def _message(self, text: str) -> dict:
        """A chat answer's message (vLLM 0.32's ``ChatMessage`` fields), with a reasoning
        model's reasoning if configured (``reasoning``, None otherwise; or older vLLM's
        ``reasoning_content``)."""
        reasoning, content = split_reasoning(text, self.config.reasoning)
        message = {"role": "assistant", "content": content, "refusal": None, "annotations": None,
                   "audio": None, "function_call": None}
        if self.config.reasoning_field == "reasoning":
            message["reasoning"] = reasoning
        elif reasoning is not None:
            message["reasoning_content"] = reasoning
        return message

    def _check_context(self, prompt_tokens: list[int], max_tokens: int) -> None:
        """Fail the whole request if any prompt plus ``max_tokens`` exceeds the context."""
        room = self.config.max_model_len - max_tokens
        if max(prompt_tokens) > room:
            first = next(t for t in prompt_tokens if t > room)
            raise BadRequest(context_error(first, max_tokens, self.config.max_model_len))

    async def _generate(self, prompt_tokens: list[int], answers: list[tuple], n: int,
                        started: float) -> None:
        """Spend the simulated time (engine) or account an instant answer."""
        if self.engine is not None:
            await self.engine.generate(prompt_tokens, answers, n)
        else:
            metrics = self.metrics
            metrics.prompt_tokens += sum(prompt_tokens)
            metrics.generation_tokens += sum(a[2] for a in answers)
            metrics.success.update(a[1] for a in answers)
            metrics.e2e.observe(time.monotonic() - started, len(answers))
            metrics.queue_time.observe(0.0, len(answers))
        stats = self.stats
        stats.prompts += len(prompt_tokens)
        stats.choices += len(answers)
        stats.prompt_tokens += sum(prompt_tokens)
        stats.completion_tokens += sum(a[2] for a in answers)

    def _reply(self, id_prefix: str, obj: str, model: str, choices: list[dict],
               prompt_tokens: list[int], answers: list[tuple]) -> web.Response:
        """The response body, with the fields of vLLM 0.32's ``CompletionResponse`` /
        ``ChatCompletionResponse`` (``model``: the served name, or the LoRA adapter's)."""
        if self.config.shuffle_choices:
            self._shuffle.shuffle(choices)
        p_tok, c_tok = sum(prompt_tokens), sum(a[2] for a in answers)
        payload = {
            "id": id_prefix + uuid.uuid4().hex,
            "object": obj,
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {"prompt_tokens": p_tok, "total_tokens": p_tok + c_tok, "completion_tokens": c_tok,
                      "prompt_tokens_details": None, "completion_tokens_details": None},
        }
        if obj == "chat.completion":
            payload.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        payload.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return web.Response(body=_dumps(payload).encode("utf-8"), content_type="application/json")


#: options the simulator checks itself, with vLLM's own words (sampling_error, the model check)
_WORDED_OPTIONS = frozenset(("max_tokens", "n", "seed", "temperature", "top_p", "stop", "model"))


def _check_conversations(conversations) -> None:
    """The 400 vLLM 0.32 answers when the batch route's ``messages`` is not a non-empty list of
    non-empty lists (``BatchChatCompletionRequest.messages``, its pydantic ``min_length=1``)."""
    def refuse(loc: str, value) -> None:
        if value is None:
            refused = validation_error(loc, "missing", "Field required", {})
        elif isinstance(value, list):
            refused = validation_error(loc, "too_short", "List should have at least 1 item after validation, not 0",
                                       value, {"field_type": "List", "min_length": 1, "actual_length": 0})
        else:
            refused = validation_error(loc, "list_type", "Input should be a valid list", value)
        raise BadRequest(str(refused), param=refused.param, err_type=refused.err_type)

    if not isinstance(conversations, list) or not conversations:
        refuse("body.messages", conversations)
    for i, conversation in enumerate(conversations):
        if not isinstance(conversation, list) or not conversation:
            refuse(f"body.messages.{i}", conversation)


def _greedy(body: dict) -> bool:
    """Whether a request samples greedily (temperature 0; the default is 1.0 on both routes)."""
    temperature = body.get("temperature")
    return temperature is not None and temperature < SAMPLING_EPS


def _conversation(messages) -> list:
    """One conversation of a request, or the 400 vLLM answers."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages must be a non-empty list of message objects.")
    return messages


def _int_param(body: dict, key: str, default: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be an integer, got {value!r}.", param=key)
    return value


def _number_param(body: dict, key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{key} must be a number, got {value!r}.", param=key)
    return float(value)


_INT64 = 1 << 63


def _sampling_params(body: dict) -> tuple[int, int | None, list[str]]:
    """``(n, seed, stop)`` as types (their values are checked by ``sampling_error``); unknown
    keys are ignored, as vLLM does."""
    if body.get("stream"):
        raise BadRequest("stream=true is not supported by the simulator.")
    n = _int_param(body, "n", 1)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not -_INT64 <= seed < _INT64):
        raise BadRequest(f"seed must be an integer in [-2**63, 2**63 - 1], got {seed!r}.", param="seed")
    stop = body.get("stop")
    if not (stop is None or isinstance(stop, str)
            or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise BadRequest("stop must be a string or a list of strings.", param="stop")
    return n, seed, [] if stop is None else [stop] if isinstance(stop, str) else stop


def _prompts(prompt: object) -> list[str]:
    if isinstance(prompt, str) and prompt:
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(type(p) is str for p in prompt):
            return prompt
        if all(isinstance(p, (int, list)) for p in prompt):
            raise BadRequest("Token-id prompts are not supported by the simulator; send text.")
    if prompt is None or prompt == "":  # CompletionRequest.validate_prompt_and_prompt_embeds
        raise BadRequest("Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                         param="prompt")
    raise BadRequest("prompt must be a string or a non-empty list of strings.", param="prompt")


def _model_card(name: str, root: str, parent: str | None, max_model_len: int | None) -> dict:
    """One ``/v1/models`` card with vLLM 0.32's ``ModelCard`` fields."""
    now = int(time.time())
    permission = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": now,
                  "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                  "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                  "organization": "*", "group": None, "is_blocking": False}
    return {"id": name, "object": "model", "created": now, "owned_by": "vllm", "root": root, "parent": parent,
            "max_model_len": max_model_len, "permission": [permission]}
