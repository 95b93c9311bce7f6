"""The HTTP side of one rank: its endpoint's health, and batched calls (no MPI here).

Calls are plain HTTP posts (bearer auth, JSON parsed here) on one ``httpx`` client: the
``openai`` package's typed ``completions.create`` costs ~20x more CPU per prompt on large
lists, and importing it costs every rank ~0.5 s of start-up and ~700 modules (read from a
shared file system at thousands of ranks). Failures raise :mod:`mpiswarm.errors`; nothing is
retried silently; answers are placed by ``choice.index``, never by position.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass

try:  # the httpx the installed openai ships on: httpx2 (openai >= 3), else httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the installed openai
    import httpx

from .balance import DEFAULT_MAX_PROMPTS_PER_CALL
from .errors import CallTimeout, ConnectionFailed, ErrorKind, StatusError, status_message
from .metrics import parse_prometheus
from .records import ResultColumns

HEALTH_POLL_S = 0.5
#: TCP keepalive on every connection: a peer gone without a word (its node died, the link was
#: cut: no RST ever comes) is noticed after idle + count x interval seconds (90 s), not once
#: --request-timeout (600 s) has passed; a server busy with a long call answers the probes from
#: its kernel, so a slow call is never taken for a dead one
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 60, 10, 3


def keepalive_options() -> list[tuple[int, int, int]]:
    """``setsockopt`` triples for :data:`KEEPALIVE_IDLE_S` and co. (those this platform has)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class EndpointUnavailable(RuntimeError):
    """The endpoint did not become healthy before the deadline."""


@dataclass(frozen=True)
class ClientOptions:
    """How a rank talks to its endpoint."""

    model: str
    api: str = "completions"  # or "chat"
    chat_route: str = "auto"  # or "single": never /v1/chat/completions/batch
    api_key: str = "EMPTY"
    batch_size: int | None = None  # prompts per call; None: all rows sharing their overrides
    concurrency: int | None = None  # calls in flight; None: 8 for lists, 128 for chat (calls_in_flight)
    request_timeout: float = 600.0  # seconds a call may take, plus per_prompt_timeout per prompt
    per_prompt_timeout: float = 0.5
    #: no call carries more prompts (the server's VLLM_MAX_COMPLETION_PROMPTS; batch_size above it is cut to it)
    max_prompts_per_call: int = DEFAULT_MAX_PROMPTS_PER_CALL
    #: every endpoint serves /v1/chat/completions/batch (found at the health check): chat rows
    #: go in lists, as prompts do, rather than one call a conversation
    chat_batch: bool = False

    def one_call_a_row(self) -> bool:
        """Whether calls carry one row each (``--api chat`` without the batch route)."""
        return self.api == "chat" and not self.chat_batch

    def calls_in_flight(self) -> int:
        if self.concurrency:
            return self.concurrency
        # Lists: 8 calls of ~48 prompts rather than 4 of ~96 keep an engine fuller (issue 7: a
        # list call frees its rows only when its last prompt is done; 0.94 vs 0.88 of capacity).
        return 128 if self.one_call_a_row() else 8

    def timeout_for(self, n_sequences: int) -> float:
        """A list of 2,000 prompts needs longer than one of 20."""
        return self.request_timeout + self.per_prompt_timeout * n_sequences


def server_root(base_url: str) -> str:
    """``http://h:p/v1`` → ``http://h:p`` (where vLLM serves ``/health`` and ``/metrics``)."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def describe_error(exc: BaseException, timeout: float | None = None) -> str:
    """One line saying why a call failed, as stored in the ``error`` column."""
    if isinstance(exc, CallTimeout):
        return f"timeout after {timeout:.0f} s" if timeout else "timeout"
    if isinstance(exc, StatusError):
        return str(exc)
    if isinstance(exc, ConnectionFailed):
        cause = exc.__cause__
        return f"connection error: {type(cause).__name__ if cause else ''} {cause or exc}".strip()
    return f"{type(exc).__name__}: {exc}"


class BadReply(ValueError):
    """A 200 that does not answer the call: a body that is not JSON or not a completion, or
    choices with a missing, repeated or out-of-range ``index`` or without ``text``. ``placed``:
    the good choices were placed and each row left unanswered carries its own reason (failed,
    not final); else no row was touched. Retried like a failed call (the unanswered rows only)."""

    def __init__(self, message: str, placed: bool = False):
        super().__init__(message)
        self.placed = placed


NO_CHOICE = "response carried no choice for this prompt"


def _choices(data) -> list:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise BadReply(f"reply is not a completion (no 'choices' list): {str(data)[:120]}")
    return choices


def place_completions(data: dict, rows, n: int, results: ResultColumns, latency_s: float) -> int:
    """Put a ``/v1/completions`` response's choices into ``results`` by ``choice.index``.

    ``rows[i]`` is the local row of the call's prompt *i*; choice ``index = i * n + j``.
    Returns the number of rows answered. A row without all its choices is failed, not for good
    (``done`` stays False: the caller sends it again), with why; a choice that cannot be placed
    (an index repeated, out of range or not an integer, no ``text``) spoils its row and, after
    the good ones are placed, raises :class:`BadReply` (``placed=True``).
    """
    choices = _choices(data)
    if n == 1 == results.n and isinstance(rows, range):
        return _place_contiguous(choices, data, rows, results, latency_s)
    return _place_by_index(choices, data, rows, n, results, latency_s, "text", _place_text)


def _place_text(choice: dict, flat: int, results: ResultColumns) -> bool:
    """A completions choice's answer into entry ``flat``; False when it carries no text."""
    text = choice.get("text")
    if not isinstance(text, str):
        return False
    results.completion[flat] = text
    results.finish_reason[flat] = choice.get("finish_reason") or ""
    if choice.get("logprobs") is not None:
        _set_logprobs(results, flat, choice["logprobs"])
    return True


def _place_by_index(choices: list, data: dict, rows, n: int, results: ResultColumns, latency_s: float,
                    what: str, place) -> int:
    """Place each choice by ``index = i * n + j`` (prompt or conversation *i*, choice *j*) with
    ``place(choice, flat, results)`` (False: the choice carries no ``what``); see
    :func:`place_completions` for what becomes of rows without all their choices."""
    k = len(rows)
    n_out = results.n
    seen = bytearray(k * n)
    spoiled: dict[int, str] = {}  # prompt i -> why its answer cannot be trusted
    problem = None
    for choice in choices:
        idx = choice.get("index") if isinstance(choice, dict) else None
        if not isinstance(idx, int) or not 0 <= idx < k * n:
            problem = problem or f"choice index {idx!r} out of range for {k} prompts x n={n}"
            continue
        i, j = divmod(idx, n)
        if seen[idx] or not place(choice, rows[i] * n_out + j, results):
            why = f"choice index {idx} repeated" if seen[idx] else f"choice {idx} carried no {what}"
            spoiled.setdefault(i, why)
            problem = problem or why
            continue
        seen[idx] = 1
    return _settle(data, rows, [i not in spoiled and all(seen[i * n:i * n + n]) for i in range(k)], spoiled,
                   problem, results, latency_s)


def _place_contiguous(choices: list, data: dict, rows: range, results: ResultColumns, latency_s: float) -> int:
    """:func:`place_completions` for the common case: n = 1 and contiguous rows."""
    k = len(rows)
    base = rows.start
    completion, finish = results.completion, results.finish_reason
    seen = bytearray(k)
    spoiled: dict[int, str] = {}
    problem = None
    for choice in choices:
        try:  # the common case at C speed; anything odd is sorted out below
            i = choice["index"]
            if i < 0 or seen[i] or type(i) is not int:
                raise IndexError
            text = choice["text"]
            if type(text) is not str:
                raise KeyError
            seen[i] = 1
            completion[base + i] = text
            finish[base + i] = choice.get("finish_reason") or ""
            if choice.get("logprobs") is not None:
                _set_logprobs(results, base + i, choice["logprobs"])
        except (IndexError, KeyError, TypeError):
            idx = choice.get("index") if isinstance(choice, dict) else None
            if isinstance(idx, int) and 0 <= idx < k:
                why = f"choice index {idx} repeated" if seen[idx] else f"choice {idx} carried no text"
                spoiled.setdefault(idx, why)
            else:
                why = f"choice index {idx!r} out of range for {k} prompts"
            problem = problem or why
    if not spoiled and problem is None and seen.count(1) == k:
        results.latency_s[base : base + k] = latency_s
        results.answered(rows)
        if k == 1:
            _set_row_usage(data, base, results)
        return k
    return _settle(data, rows, [bool(seen[i]) and i not in spoiled for i in range(k)], spoiled, problem, results,
                   latency_s)


def _settle(data: dict, rows, good: list[bool], spoiled: dict[int, str], problem: str | None,
            results: ResultColumns, latency_s: float) -> int:
    """Mark the call's answered rows, fail the others (not for good) each with why; raise
    :class:`BadReply` if some choice could not be placed."""
    k = len(rows)
    results.latency_s[rows if isinstance(rows, list) else slice(rows.start, rows.stop)] = latency_s
    results.answered([rows[i] for i in range(k) if good[i]])
    for i in range(k):
        if not good[i]:
            results.fail([rows[i]], spoiled.get(i, NO_CHOICE), latency_s, final=False, kind=ErrorKind.BAD_REPLY)
    if k == 1 and good[0]:
        _set_row_usage(data, rows[0], results)
    if problem is not None:
        raise BadReply(problem, placed=True)
    return sum(good)


def place_chat(data: dict, row: int, n: int, results: ResultColumns, latency_s: float) -> int:
    """Put a ``/v1/chat/completions`` response's choices into ``results`` (one row).

    A reasoning model's reasoning (``message.reasoning`` or ``reasoning_content``) goes to
    ``results.reasoning``; an answer that is all reasoning (``content`` empty or null) is
    answered, with an empty completion. A reply without all its choices fails the row, not for
    good (the caller sends it again); a choice out of range or without a ``message`` raises
    :class:`BadReply`."""
    got, seen = 0, set()
    for choice in _choices(data):
        j = choice.get("index", got) if isinstance(choice, dict) else None
        if not isinstance(j, int) or not 0 <= j < n or j in seen:
            raise BadReply(f"choice index {j!r} out of range or repeated for n={n}")
        seen.add(j)
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadReply(f"choice {j} carried no message")
        _place_message(message, choice, row * results.n + j, results)
        got += 1
    results.latency_s[row] = latency_s
    if got < n:
        results.fail([row], f"response carried {got} of {n} choices", latency_s, final=False,
                     kind=ErrorKind.BAD_REPLY)
        return 0
    results.answered([row])
    _set_row_usage(data, row, results)
    return 1


def place_chat_batch(data: dict, rows, results: ResultColumns, latency_s: float) -> int:
    """Put a ``/v1/chat/completions/batch`` response's choices into ``results``: choice
    ``index`` i answers conversation i (``rows[i]``), n = 1. As :func:`place_completions`: a
    conversation without a usable choice is failed, not for good, with why, and a choice that
    cannot be placed raises :class:`BadReply` once the good ones are placed."""
    return _place_by_index(_choices(data), data, rows, 1, results, latency_s, "message", _place_chat_choice)


def _place_chat_choice(choice: dict, flat: int, results: ResultColumns) -> bool:
    """A chat choice's answer into entry ``flat``; False when it carries no message."""
    message = choice.get("message")
    if not isinstance(message, dict):
        return False
    _place_message(message, choice, flat, results)
    return True


def _place_message(message: dict, choice: dict, flat: int, results: ResultColumns) -> None:
    """A chat choice's answer into entry ``flat``: its content, finish reason and reasoning."""
    results.completion[flat] = message.get("content") or ""
    results.finish_reason[flat] = choice.get("finish_reason") or ""
    # vLLM's reasoning parsers: 'reasoning' (vLLM >= 0.11), 'reasoning_content' before
    thought = message.get("reasoning") or message.get("reasoning_content")
    if thought:
        results.set_reasoning(flat, thought)
    if choice.get("logprobs") is not None:
        _set_logprobs(results, flat, choice["logprobs"])


def _set_logprobs(results: ResultColumns, flat: int, logprobs) -> None:
    """A choice's logprobs, as the server returned them, into the ``logprobs`` column (JSON)."""
    results.set_optional("logprobs", flat, json.dumps(logprobs, ensure_ascii=False, separators=(",", ":")))


def _set_row_usage(data: dict, row: int, results: ResultColumns) -> None:
    usage = data.get("usage") or {}
    results.prompt_tokens[row] = usage.get("prompt_tokens", -1) if usage.get("prompt_tokens") is not None else -1
    results.completion_tokens[row] = (
        usage.get("completion_tokens", -1) if usage.get("completion_tokens") is not None else -1
    )


def model_problem(cards: list[dict] | None, model: str, source: str = "--model") -> str | None:
    """Why an endpoint with these ``/v1/models`` cards cannot serve ``model``, else None.

    vLLM answers 404 for a model it does not serve, so a vLLM endpoint (its cards are
    ``owned_by: "vllm"``) must list ``model`` among its ids — the served names and the LoRA
    adapters, which are cards of their own with a ``parent``. Other servers are taken as they
    are (llama.cpp's llama-server serves whatever name a request gives), as is an endpoint
    whose cards cannot be read."""
    if not cards or not any(c.get("owned_by") == "vllm" for c in cards):
        return None
    ids = [str(c.get("id")) for c in cards]
    if model in ids:
        return None
    return f"it does not serve {source} {model!r} (it serves: {', '.join(ids)})"


def card_max_model_len(cards: list[dict], model: str) -> int:
    """``max_model_len`` of ``model``'s card (a LoRA adapter's: its parent's; the only card
    when none is named ``model``), -1 when not advertised."""
    by_id = {c.get("id"): c for c in cards}
    card = by_id.get(model) or (cards[0] if len(cards) == 1 else None)
    if card is not None and card.get("max_model_len") is None and card.get("parent") in by_id:
        card = by_id[card["parent"]]
    if card is None:
        return -1
    # vLLM: max_model_len; llama.cpp's llama-server: meta.n_ctx (one slot's context)
    value = card.get("max_model_len", (card.get("meta") or {}).get("n_ctx"))
    return int(value) if isinstance(value, int) else -1


class EndpointClient:
    """One rank's connection to its endpoint. Use as ``async with EndpointClient(...) as c``."""

    def __init__(self, base_url: str, options: ClientOptions):
        self.base_url = base_url.rstrip("/")
        self.options = options
        self._http: httpx.AsyncClient | None = None
        self._headers = {"Authorization": f"Bearer {options.api_key}"}
        self._no_tokenize = False

    async def __aenter__(self) -> "EndpointClient":
        slots = self.options.calls_in_flight() + 4
        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=slots, max_keepalive_connections=slots),
            trust_env=False,  # endpoints are in the job's network: an exported http_proxy must not apply
            socket_options=keepalive_options(),
        )
        self._http = httpx.AsyncClient(transport=transport, trust_env=False,
                                       timeout=httpx.Timeout(self.options.request_timeout, connect=30.0))
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.aclose()

    # -- health -------------------------------------------------------------------------
    async def _probe(self) -> str | None:
        """None when healthy, else why not."""
        try:
            resp = await self._http.get(server_root(self.base_url) + "/health", timeout=10.0)
            if resp.status_code == 200:
                return None
            if resp.status_code in (404, 405):  # no /health: fall back to /v1/models
                resp = await self._http.get(self.base_url + "/models", timeout=10.0)
                if resp.status_code == 200:
                    return None
            return f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def wait_healthy(self, timeout_s: float) -> None:
        """Poll ``/health`` (else ``/v1/models``) until 200; raise :class:`EndpointUnavailable`
        with the last reason once ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            why = await self._probe()
            if why is None:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EndpointUnavailable(f"not healthy after {timeout_s:g} s (last: {why})")
            await asyncio.sleep(min(HEALTH_POLL_S, remaining))

    async def model_cards(self) -> list[dict] | None:
        """The cards of ``/v1/models`` (None when it cannot be read)."""
        try:
            resp = await self._http.get(self.base_url + "/models", timeout=10.0)
            cards = resp.json().get("data") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else None

    async def max_model_len(self) -> int:
        """``max_model_len`` from ``/v1/models`` for our model (-1 when not advertised)."""
        return card_max_model_len(await self.model_cards() or [], self.options.model)

    async def metrics(self) -> dict[str, float] | None:
        """The endpoint's ``/metrics``, parsed; None when it has none (or cannot be read)."""
        try:
            resp = await self._http.get(server_root(self.base_url) + "/metrics", timeout=10.0)
        except httpx.HTTPError:
            return None
        return parse_prometheus(resp.text) if resp.status_code == 200 else None

    async def count_tokens(self, text: str) -> int | None:
        """``text``'s length in the endpoint's own tokens, from its ``/tokenize`` (vLLM:
        ``{"prompt"}`` → ``count``; llama.cpp: ``{"content"}`` → ``tokens``); None when the
        endpoint has no tokenizer route (then it is not asked again)."""
        if self._no_tokenize:
            return None
        body = {"model": self.options.model, "prompt": text, "content": text}
        try:
            resp = await self._http.post(server_root(self.base_url) + "/tokenize", json=body, timeout=30.0)
            data = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("count"), int):
            return data["count"]
        if isinstance(data, dict) and isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        self._no_tokenize = True
        return None

    # -- calls --------------------------------------------------------------------------
    async def is_down(self) -> bool:
        """One quick look at ``/health`` after a failure: 503 or no answer means down."""
        return await self._probe() is not None

    async def _post(self, path: str, body: dict, n_sequences: int) -> tuple[dict, float]:
        timeout = self.options.timeout_for(n_sequences)
        t0 = time.perf_counter()
        try:
            resp = await self._http.post(self.base_url + path, json=body, headers=self._headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise CallTimeout(str(exc)) from exc
        except httpx.HTTPError as exc:
            raise ConnectionFailed(str(exc)) from exc
        if resp.status_code >= 400:
            raise StatusError(resp.status_code, status_message(resp.status_code, resp.content))
        try:
            data = json.loads(resp.content)
        except ValueError as exc:  # a 200 with a proxy's HTML page, a truncated body, …
            raise BadReply(f"reply is not JSON ({exc}): {resp.content[:80]!r}") from None
        return data, time.perf_counter() - t0

    async def complete(self, prompts: list[str], params: dict) -> tuple[dict, float]:
        """One ``/v1/completions`` call with ``prompt`` as a list: (parsed reply, seconds).

        Raises :class:`~mpiswarm.errors.StatusError`, :class:`~mpiswarm.errors.CallTimeout` or
        :class:`~mpiswarm.errors.ConnectionFailed`; a reply that does not parse, ``ValueError``."""
        body = {"model": self.options.model, "prompt": prompts, **params}
        return await self._post("/completions", body, len(prompts) * params.get("n", 1))

    async def chat(self, messages: list, params: dict) -> tuple[dict, float]:
        """One ``/v1/chat/completions`` call for one conversation."""
        body = {"model": self.options.model, "messages": messages, **params}
        return await self._post("/chat/completions", body, params.get("n", 1))

    async def chat_batch(self, conversations: list[list], params: dict) -> tuple[dict, float]:
        """One ``/v1/chat/completions/batch`` call (vLLM >= 0.32): ``messages`` a list of
        conversations, one choice a conversation, ``index`` 0…N−1."""
        body = {"model": self.options.model, "messages": conversations, **params}
        return await self._post("/chat/completions/batch", body, len(conversations))

    async def has_chat_batch(self) -> bool:
        """Whether the endpoint serves ``/v1/chat/completions/batch``: a body it must refuse
        (no conversation) is answered 400/422 where the route exists, 404 where it does not;
        nothing is generated either way."""
        try:
            resp = await self._http.post(self.base_url + "/chat/completions/batch", headers=self._headers,
                                         json={"model": self.options.model, "messages": []}, timeout=10.0)
        except httpx.HTTPError:
            return False
        return resp.status_code not in (404, 405, 501)
