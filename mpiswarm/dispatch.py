"""A rank's calls, sent with ``concurrency`` in flight, and what happens when they fail.

* transient failures (5xx, 429, timeouts, dropped connections) are retried with the
  :class:`~mpiswarm.retry.RetryPolicy`'s backoff;
* no call carries more than ``max_prompts_per_call`` prompts; a 400 naming a lower limit
  (vLLM's ``VLLM_MAX_COMPLETION_PROMPTS``) splits the list into lists of that limit, and it
  holds for the rest of the run;
* a list that fails with another client error (400/422, e.g. one prompt over ``max_model_len``)
  is bisected until the bad prompts are isolated: only they fail, each with its error;
* an endpoint that keeps failing, or whose ``/health`` turns bad, is declared dead and the rank
  carries on with the next live endpoint of the job (ring order from its own); when none is
  left, its remaining rows stay unanswered for a resume;
* a reply that does not answer every row (a missing, repeated or out-of-range ``choice.index``,
  a choice without text, a 200 whose body is not JSON or not a completion) keeps the rows it
  did answer and sends the others again under the same retry policy; only when the attempts are
  spent do they fail, each with what was wrong (counted in ``n_bad_replies``);
* a stop request (SIGTERM, ``--time-limit``) lets no new call start and cancels those in flight.

Every finished call is reported to ``on_finished(results, rows)`` (the checkpoint). No MPI here.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from contextlib import AsyncExitStack
from typing import Callable

import numpy as np

from .balance import Chunk
from .budget import NO_ROOM, TokenBudget
from .chat import CHAT_KEY, batchable, conversation
from .client import (BadReply, ClientOptions, EndpointClient, describe_error, model_problem, place_chat,
                     place_chat_batch, place_completions)
from .errors import CallError, ErrorKind, kind_of
from .options import CHAT, COMPLETIONS
from .records import RankStats, ResultColumns
from .retry import CLIENT_ERROR, TRANSIENT, RetryPolicy, classify

#: the routes a call can take (Dispatcher.route): the options table's two, and chat's batch route
CHAT_BATCH = "chat_batch"
UNANSWERED_DEAD = "not answered: every endpoint is down (run the same command again to resume)"
UNANSWERED_STOPPED = "not answered: the job was stopped before this prompt (run the same command again to resume)"
# errors of one call: the client's, and a reply that does not parse
_CALL_ERRORS = (CallError, ValueError, KeyError, TypeError)
# vLLM's 400 for a list over VLLM_MAX_COMPLETION_PROMPTS (0.32.0, vllm/entrypoints/openai/
# completion/protocol.py, validate_prompt_list_length): "prompt list length 3000 exceeds the
# maximum allowed count of 1024. To increase this limit, set the VLLM_MAX_COMPLETION_PROMPTS …"
_PROMPT_LIMIT = re.compile(r"prompt list length \d+ exceeds the maximum allowed count of (\d+)")


def prompt_limit(message: str) -> int | None:
    """The prompts-per-call limit an error message names (vLLM's list-length 400), else None."""
    m = _PROMPT_LIMIT.search(message)
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


class AllEndpointsDown(Exception):
    """No live endpoint is left for this rank."""


class EndpointPool:
    """The endpoints a rank may use: its own first, then the others in ring order. An endpoint
    declared dead can come back (:meth:`revive_dead`); every loss and return is kept in
    :attr:`events` (seconds since the pool was made)."""

    def __init__(self, urls: list[str], options: ClientOptions, stack: AsyncExitStack, clock=time.monotonic):
        self.urls = list(dict.fromkeys(urls))
        self.options = options
        self._stack = stack
        self._clients: dict[str, EndpointClient] = {}
        self.dead: dict[str, str] = {}  # url -> why
        self.events: list[dict] = []  # {"url", "event": "lost" | "back", "t": s, "why"}
        self._clock = clock
        self._t0 = clock()

    async def _client(self, url: str) -> EndpointClient:
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = await self._stack.enter_async_context(EndpointClient(url, self.options))
        return client

    async def current(self) -> EndpointClient:
        for url in self.urls:
            if url not in self.dead:
                return await self._client(url)
        raise AllEndpointsDown

    def _event(self, url: str, event: str, why: str = "") -> None:
        self.events.append({"url": url, "event": event, "t": round(self._clock() - self._t0, 3), "why": why})

    def mark_dead(self, client: EndpointClient, why: str) -> bool:
        """Declare ``client``'s endpoint dead; False if it already was."""
        return self.declare_dead(client.base_url, why)

    def declare_dead(self, url: str, why: str) -> bool:
        """Declare ``url`` dead (also one that was not healthy at the start); False if it already was."""
        if url in self.dead:
            return False
        self.dead[url] = why
        self._event(url, "lost", why)
        return True

    async def revive_dead(self) -> list[str]:
        """Look at every dead endpoint's ``/health`` (and that it serves the model): those
        healthy again return to service, and the ring order sends to them again (a rank's own
        endpoint first). Returns the URLs that came back."""
        back = []
        for url in list(self.dead):
            client = await self._client(url)
            if await client.is_down() or model_problem(await client.model_cards(), self.options.model):
                continue
            del self.dead[url]
            self._event(url, "back")
            back.append(url)
        return back

    def own_endpoint_record(self) -> dict:
        """For the rank's own endpoint (the ring's first): how often it was lost and came back,
        and when last (seconds since the start, -1 never)."""
        mine = [e for e in self.events if e["url"] == self.urls[0]]
        lost = [e["t"] for e in mine if e["event"] == "lost"]
        back = [e["t"] for e in mine if e["event"] == "back"]
        return {"n_endpoint_lost": len(lost), "n_endpoint_back": len(back),
                "t_endpoint_lost": lost[-1] if lost else -1.0, "t_endpoint_back": back[-1] if back else -1.0}


class Dispatcher:
    """Sends one rank's calls, taken from a :class:`~mpiswarm.control.WorkSource`, and fills
    each chunk's results; see the module docstring."""

    def __init__(self, pool: EndpointPool, stats: RankStats, *, policy: RetryPolicy | None = None,
                 on_finished: Callable | None = None, sleep=asyncio.sleep, rng: random.Random | None = None,
                 budget: TokenBudget | None = None, revive_interval: float | None = None):
        self.pool = pool
        self.revive_interval = revive_interval  # seconds between looks at the dead endpoints; None: never
        self.budget = budget  # --max-tokens auto: explains the rows it left no room
        self.stats = stats
        self.policy = policy or RetryPolicy()
        self.on_finished = on_finished or (lambda results, rows: None)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.n_finished = 0  # rows finished for good (answered or failed)
        self.n_answered = 0
        self.latency = 0.0  # moving average of successful calls' durations
        self.all_down = False
        #: prompts a call may carry: --max-prompts-per-call, lowered by a server's 400 naming its limit
        self.max_prompts = pool.options.max_prompts_per_call
        self._decoded: dict[str, dict] = {"": {}}

    def route(self, params: dict) -> str:
        """Where a call with these options goes: :data:`COMPLETIONS` (prompt rows under
        ``--api completions``), :data:`CHAT_BATCH` (chat rows, or prompt rows under ``--api
        chat``, where every endpoint serves the batch route and the options allow it), else
        :data:`CHAT` (one conversation a call)."""
        options = self.pool.options
        if CHAT_KEY not in params and options.api != "chat":
            return COMPLETIONS
        return CHAT_BATCH if options.chat_batch and batchable(params) else CHAT

    def params(self, base: dict, overrides: str) -> dict:
        """A call's request options: the command line's ``base``, the rows' own over them, a
        row's ``extra_body`` merged in as the ``openai`` client merges it."""
        decoded = self._decoded.get(overrides)
        if decoded is None:
            own = json.loads(overrides)
            extra = own.pop("extra_body", None) or {}
            decoded = self._decoded[overrides] = {**own, **extra}
        return {**base, **decoded} if decoded else base

    def progress(self) -> tuple[int, int, float]:
        """(rows finished, rows answered, typical seconds a successful call takes)."""
        return self.n_finished, self.n_answered, self.latency

    def _finished(self, results: ResultColumns, rows) -> None:
        self.n_finished += len(rows)
        self.n_answered += int(results.ok[rows if isinstance(rows, list) else slice(rows.start, rows.stop)].sum())
        self.on_finished(results, rows)

    # -- one call, with its retries, bisection and failover ------------------------------
    async def _attempt(self, client: EndpointClient, chunk: Chunk, rows, params) -> None:
        """One HTTP call for ``rows`` of ``chunk``; places the answers or raises."""
        self.stats.n_calls += 1
        n = params.get("n", 1)
        route = self.route(params)
        if route != COMPLETIONS:
            chunk.results.chat[rows] = True
            chat_row = CHAT_KEY in params
            sent = {k: v for k, v in params.items() if k != CHAT_KEY}
            if route == CHAT_BATCH:
                self.stats.n_chat_batch_calls += 1
                data, latency = await client.chat_batch([conversation(chunk.prompts[r], chat_row) for r in rows], sent)
                place_chat_batch(data, rows, chunk.results, latency)
            else:
                self.stats.n_chat_calls += 1
                data, latency = await client.chat(conversation(chunk.prompts[rows[0]], chat_row), sent)
                place_chat(data, rows[0], n, chunk.results, latency)
        else:
            data, latency = await client.complete([chunk.prompts[r] for r in rows], params)
            place_completions(data, rows, n, chunk.results, latency)
        self.latency = latency if not self.latency else 0.8 * self.latency + 0.2 * latency
        usage = data.get("usage") or {}
        self.stats.prompt_tokens += usage.get("prompt_tokens") or 0
        self.stats.completion_tokens += usage.get("completion_tokens") or 0

    def _no_room(self, chunk: Chunk, rows) -> None:
        """Rows ``--max-tokens auto`` left no room for an answer: each fails alone, unsent."""
        for row in rows:
            chunk.results.fail([row], self.budget.no_room(chunk.prompts[row]), final=True, kind=ErrorKind.NO_ROOM)
        self._finished(chunk.results, rows)

    async def send(self, chunk: Chunk, rows, params: dict) -> None:
        """Answer ``rows`` of ``chunk``, however many attempts and endpoints it takes."""
        results = chunk.results
        if self.budget is not None and params.get("max_tokens") == NO_ROOM:
            self._no_room(chunk, rows)
            return
        if len(rows) > self.max_prompts:  # (a limit learned since the call was planned)
            await self._send_split(chunk, rows, params)
            return
        attempt, first_try = 0, time.monotonic()
        while True:
            try:
                client = await self.pool.current()
            except AllEndpointsDown:
                self.all_down = True
                results.fail(rows, UNANSWERED_DEAD, final=False, kind=ErrorKind.NOT_ANSWERED)
                return
            attempt += 1
            t0 = time.monotonic()
            try:
                await self._attempt(client, chunk, rows, params)
                left = [r for r in rows if not results.ok[r]]
                if not left:
                    self._finished(results, rows)
                    return
                bad = True  # some rows had no (usable) choice: each carries why
            except asyncio.CancelledError:
                raise
            except BadReply as exc:
                if not exc.placed:  # nothing placed: every row carries the reply's problem
                    results.fail(rows, str(exc), time.monotonic() - t0, final=False, kind=ErrorKind.BAD_REPLY)
                left, bad = [r for r in rows if not results.ok[r]], True
            except _CALL_ERRORS as exc:
                kind = classify(exc)
                error_kind, status = kind_of(exc)
                self.stats.n_failed_calls += 1
                reason = describe_error(exc, self.pool.options.timeout_for(len(rows) * params.get("n", 1)))
                bad = False
            if bad:
                rows = await self._bad_reply(results, rows, left, attempt, first_try)
                if not rows:
                    return
                continue
            limit = prompt_limit(reason) if kind == CLIENT_ERROR else None
            if limit is not None and limit < len(rows):  # the list was too long, not a prompt bad
                self.max_prompts = min(self.max_prompts, limit)
                await self._send_split(chunk, rows, params)
                return
            if kind == CLIENT_ERROR and len(rows) > 1:
                self.stats.n_bisections += 1
                half = len(rows) // 2
                await self.send(chunk, rows[:half], params)
                await self.send(chunk, rows[half:], params)
                return
            if kind != TRANSIENT:  # a bad prompt, isolated; or an error no retry can fix
                results.fail(rows, reason, time.monotonic() - t0, final=True, kind=error_kind, status=status)
                self._finished(results, rows)
                return
            delay = self.policy.delay(attempt, self.rng)
            gave_up = not self.policy.should_retry(attempt, time.monotonic() - first_try, delay)
            if gave_up or await client.is_down():
                why = f"{attempt} attempts failed (last: {reason})" if gave_up else f"down after: {reason}"
                if self.pool.mark_dead(client, why):
                    self.stats.n_failovers += 1
                attempt, first_try = 0, time.monotonic()
                continue
            self.stats.n_retries += 1
            await self.sleep(delay)

    async def _bad_reply(self, results: ResultColumns, rows, left: list, attempt: int, first_try: float) -> list:
        """After a reply that left ``left`` of ``rows`` unanswered (each with why in its
        ``error``): the answered rows are finished; the others are returned to be sent again
        after the policy's backoff, or, once the attempts are spent, failed for good (an empty
        list is returned)."""
        self.stats.n_bad_replies += 1
        answered = [r for r in rows if results.ok[r]]
        if answered:
            self._finished(results, answered)
        delay = self.policy.delay(attempt, self.rng)
        if not self.policy.should_retry(attempt, time.monotonic() - first_try, delay):
            for row in left:
                results.fail([row], f"bad reply after {attempt} attempts: {results.error[row]}",
                             results.latency_s[row], final=True, kind=ErrorKind.BAD_REPLY)
            self._finished(results, left)
            return []
        self.stats.n_retries += 1
        await self.sleep(delay)
        return left

    async def _send_split(self, chunk: Chunk, rows, params: dict) -> None:
        """``rows`` in lists of at most ``max_prompts`` (by the limit, never by halving)."""
        step = self.max_prompts
        for start in range(0, len(rows), step):
            await self.send(chunk, rows[start:start + step], params)

    async def _revive(self, stop: asyncio.Event) -> None:
        """Every ``revive_interval`` seconds, return the dead endpoints that are healthy again
        (a server restarted, one that was still loading at the start) to service."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # the interval, or a stop: whichever first
                await asyncio.wait_for(stop.wait(), self.revive_interval)
            if stop.is_set():
                return
            await self.pool.revive_dead()

    # -- all calls ---------------------------------------------------------------------
    async def run(self, source, base_params: dict, stop: asyncio.Event | None = None) -> None:
        """Send calls from ``source``, ``calls_in_flight()`` at a time, until it runs dry or
        ``stop`` is set; then every row not finished carries why."""
        stop = stop or asyncio.Event()

        async def worker():
            while not stop.is_set() and not self.all_down:
                got = await source.next_call()
                if got is None:
                    return
                chunk, plan = got
                params = self.params(base_params, plan.overrides)
                if self.route(params) == CHAT:  # one call a conversation, the call's rows at once
                    await asyncio.gather(*(self.send(chunk, [row], params) for row in plan.rows))
                else:
                    await self.send(chunk, plan.rows, params)

        workers = asyncio.gather(*(worker() for _ in range(self.pool.options.calls_in_flight())))
        stopper = asyncio.ensure_future(stop.wait())
        reviver = asyncio.ensure_future(self._revive(stop)) if self.revive_interval else None
        await asyncio.wait([workers, stopper], return_when=asyncio.FIRST_COMPLETED)
        # Done by now: every worker ran dry, or one raised. A worker that raised is a bug or a
        # broken control plane, not a failed call (those are records): it is raised below, once
        # the rows are accounted for, and reaches the abort guard, which ends the job naming
        # this rank. (Asked after the workers are cancelled, they would all say CancelledError.)
        failure = workers.exception() if workers.done() and not workers.cancelled() else None
        if reviver is not None:
            reviver.cancel()
            await asyncio.gather(reviver, return_exceptions=True)
        source.stop()
        if not workers.done():  # stopped: calls in flight are abandoned, their rows resent on resume
            workers.cancel()
            try:
                await workers
            except asyncio.CancelledError:
                pass
        stopper.cancel()
        await source.drain()
        for chunk in source.chunks:
            res = chunk.results
            reason = UNANSWERED_DEAD if self.all_down else UNANSWERED_STOPPED
            for row in np.flatnonzero(~res.done & (res.error_kind == ErrorKind.NOT_ATTEMPTED)).tolist():
                res.error[row] = reason  # (still not attempted: only why is known now)
        if failure is not None:
            raise failure
