"""Tree reduction across ranks: the answers combined ``fanin`` at a time, level by level,
by the models themselves, until one answer remains.

The tree's shape comes from :mod:`mpiswarm.tree` (the number of answers and the fan-in
alone). At each level every rank counts the inputs it holds of each group; the group is
combined by the rank holding most of them (``MPI_MAXLOC``, lowest rank on a tie), and only
the inputs of groups that span ranks move, in one ``alltoall``. Each rank then sends its
supervisor prompts of the level as batched calls through the same
:class:`~mpiswarm.dispatch.Dispatcher` as the map phase (retries, bisection, failover).

Failed inputs are left out of their group and counted; a group with no answered input fails
without a call. A supervisor prompt too long for the model (its ``max_model_len`` minus the
answer's ``max_tokens``) has its inputs shortened, each at a word boundary with a visible
marker, until the endpoint's own tokenizer (``/tokenize``; else an estimate) says it fits.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import numpy as np

from . import _mpi
from .balance import Chunk
from .budget import MARGIN_TOKENS, estimate_tokens
from .config import ReduceOptions
from .control import WorkSource
from .dispatch import AllEndpointsDown, Dispatcher, EndpointPool
from .gather import gather_results
from .errors import ErrorKind
from .records import RankStats, ResultColumns
from .template import format_prompt
from .tree import group_inputs, level_sizes, shorten, supervisor_prompt

NO_INPUT = "every input of this group failed"
#: rounds of shortening before a supervisor prompt is given up as too long
FIT_ROUNDS = 8


@dataclass
class Items:
    """The outputs of one level that a rank holds: item numbers, texts, answered or not."""

    index: np.ndarray  # int64
    text: list[str]
    ok: np.ndarray  # bool

    @classmethod
    def from_results(cls, results: ResultColumns) -> "Items":
        """Level 0 from map results: item ``row * n + j`` is choice *j* of row *row*."""
        n = results.n
        index = (results.index[:, None] * n + np.arange(n)).ravel()
        return cls(index.astype(np.int64), list(results.completion), np.repeat(results.ok, n))


@dataclass
class Level:
    """One level as stored (on the root): group *g*'s text, whether it is answered, why not,
    which inputs it combined (``first_input`` … + ``n_inputs``) and how many of those had
    failed and were left out, whether some were shortened, and who combined it."""

    level: int
    results: ResultColumns  # index = group number
    prompt: list[str]  # the supervisor prompt as sent ('' where no call was made)
    first_input: np.ndarray
    n_inputs: np.ndarray
    n_left_out: np.ndarray
    shortened: np.ndarray


@dataclass
class Reduction:
    """The whole tree (on the root): its levels and the final answer."""

    options: ReduceOptions
    n_answers: int
    levels: list[Level] = field(default_factory=list)
    final: str = ""
    final_ok: bool = False
    final_error: str = ""
    complete: bool = True  # False: stopped before the last level

    def sizes(self) -> list[int]:
        return [len(lv.results) for lv in self.levels]

    def n_left_out(self) -> int:
        return sum(int(lv.n_left_out.sum()) for lv in self.levels)


class Combiner:
    """Sends one rank's supervisor prompts of a level: fitted to the context, then batched."""

    def __init__(self, urls: list[str], config, stats: RankStats, dead: dict, stop):
        self.urls = urls
        self.config = config  # a RunConfig
        self.stats = stats
        self.dead = dead  # endpoints declared dead so far (url -> why), shared with the map phase
        self.stop = stop  # the run's StopRequest
        self.options: ReduceOptions = config.reduce
        # under --max-tokens auto the map phase has no one value: the cap, else 256
        self.max_tokens = (self.options.max_tokens or config.prompts.sampling.get("max_tokens")
                           or config.prompts.max_tokens_cap or 256)

    def budget(self) -> int | None:
        """Prompt tokens a supervisor prompt may have (None: the context is unknown)."""
        if self.stats.max_model_len <= 0:
            return None
        return self.stats.max_model_len - self.max_tokens - MARGIN_TOKENS

    def _prompt(self, texts: list[str], level: int, group: int) -> str:
        """The supervisor prompt as sent: the reduce template filled, in the --prompt-format."""
        o = self.options
        return format_prompt(self.config.prompts.prompt_format, supervisor_prompt(o.template, texts, o.joiner, level, group))

    async def _fit(self, client, texts: list[str], level: int, group: int, budget: int | None):
        """(prompt, shortened) or (None, why) when even the template alone does not fit."""
        prompt = self._prompt(texts, level, group)
        if budget is None or len(prompt.encode("utf-8")) <= budget:  # a token is at least a byte
            return prompt, False

        async def count(text: str) -> int:
            exact = await client.count_tokens(text)
            return estimate_tokens(text) if exact is None else exact

        used = await count(prompt)
        if used <= budget:
            return prompt, False
        fixed = await count(self._prompt([""] * len(texts), level, group))
        room = budget - fixed - 16 * len(texts)  # each marker costs a few tokens
        if room <= 0:
            return None, f"the reduce prompt alone leaves no room for {len(texts)} inputs in max_model_len"
        chars = sum(len(t) for t in texts)
        target = int(room * chars / max(1, used - fixed))
        for _ in range(FIT_ROUNDS):
            prompt = self._prompt(shorten(texts, target), level, group)
            used = await count(prompt)
            if used <= budget:
                return prompt, True
            target = min(target - 1, int(target * budget / used * 0.95))
            if target <= 0:
                break
        return None, f"could not shorten the inputs to fit max_model_len {self.stats.max_model_len}"

    async def combine(self, level: int, groups: np.ndarray, inputs: list[list[str]]):
        """Answer the supervisor prompts of ``groups`` (``inputs[i]``: group i's answered
        inputs). Returns (results, the prompts sent, shortened flags, whether a stop
        interrupted the level)."""
        rank = self.stats.rank
        results = ResultColumns.pending(groups, 1, rank)
        sent = [""] * len(groups)
        shortened = np.zeros(len(groups), dtype=bool)
        stop = self.stop.event()
        async with AsyncExitStack() as stack:
            pool = EndpointPool(self.urls, self.config.client, stack)
            pool.dead.update(self.dead)
            budget = self.budget()
            prompts, sendable = [], []
            try:
                client = await pool.current() if budget is not None and len(groups) else None
            except AllEndpointsDown:  # nothing will be answered: the dispatcher says why
                client, budget = None, None
            for i, (group, texts) in enumerate(zip(groups.tolist(), inputs)):
                if not texts:
                    results.fail([i], NO_INPUT, kind=ErrorKind.NO_INPUT)
                    continue
                prompt, how = await self._fit(client, texts, level, group, budget)
                if prompt is None:
                    results.fail([i], how, kind=ErrorKind.NO_ROOM)
                    continue
                shortened[i] = how
                sent[i] = prompt
                prompts.append(prompt)
                sendable.append(i)
            chunk = Chunk.new(groups[sendable], prompts, [""] * len(prompts), 1, rank)
            source = WorkSource(batch_size=self.config.client.batch_size or self.config.call_rows(),
                                concurrency=self.config.client.calls_in_flight(), cap=None,
                                limit=self.config.client.max_prompts_per_call)
            source.add(chunk)
            params = {**self.config.prompts.sampling, "max_tokens": self.max_tokens, "n": 1}
            dispatcher = Dispatcher(pool, self.stats, policy=self.config.schedule.retry)
            try:
                await dispatcher.run(source, params, stop)
            finally:
                self.stop.detach()
            self.dead.update(pool.dead)
        done = chunk.results
        positions = np.asarray(sendable, dtype=np.int64)
        for name in ("ok", "done", "rank", "prompt_tokens", "completion_tokens", "latency_s"):
            getattr(results, name)[positions] = getattr(done, name)
        for k, i in enumerate(sendable):
            results.completion[i] = done.completion[k]
            results.finish_reason[i] = done.finish_reason[k]
            results.error[i] = done.error[k]
        return results, sent, shortened, stop.is_set() and not bool(done.done.all())


def _exchange(items: Items, owners: np.ndarray, fanin: int, comm) -> Items:
    """Move every input to the owner of its group; returns the inputs this rank owns."""
    rank, size = _mpi.rank_and_size(comm)
    dest = owners[items.index // fanin] if len(items.index) else np.zeros(0, np.int64)
    outgoing = []
    for r in range(size):
        pick = np.flatnonzero(dest == r)
        outgoing.append(None if r == rank or not len(pick) else
                        (items.index[pick], [items.text[i] for i in pick.tolist()], items.ok[pick]))
    incoming = _mpi.alltoall(outgoing, comm)
    keep = np.flatnonzero(dest == rank)
    parts = [(items.index[keep], [items.text[i] for i in keep.tolist()], items.ok[keep])]
    parts += [p for p in incoming if p is not None]
    index = np.concatenate([p[0] for p in parts])
    text = [t for p in parts for t in p[1]]
    ok = np.concatenate([p[2] for p in parts])
    order = np.argsort(index, kind="stable")
    return Items(index[order], [text[i] for i in order.tolist()], ok[order])


def _gather_level(level: int, results: ResultColumns, prompts: list[str], n_prev: int, fanin: int,
                  n_left_out: np.ndarray, shortened: np.ndarray, comm) -> Level | None:
    """One level's records on the root, in group order."""
    everything = gather_results(results, comm)
    extra, _ = _mpi.gatherv(np.column_stack([results.index, n_left_out, shortened]).ravel(), comm)
    sent = _mpi.gather(prompts, comm)
    if everything is None:
        return None
    extra = extra.reshape(-1, 3)
    order = np.argsort(extra[:, 0], kind="stable")
    extra = extra[order]
    sent = [p for part in sent for p in part]
    groups = everything.index
    first = groups * fanin
    return Level(level, everything, [sent[i] for i in order.tolist()], first,
                 np.minimum(first + fanin, n_prev) - first, extra[:, 1], extra[:, 2] > 0)


def reduce_tree(level0: Items, n_answers: int, combiner: Combiner, comm=None) -> Reduction | None:
    """Reduce ``level0`` (this rank's share of the answers) up the tree; collective. Returns
    the :class:`Reduction` on the root, None elsewhere."""
    rank, _ = _mpi.rank_and_size(comm)
    options = combiner.options
    fanin = options.fanin
    reduction = Reduction(options, n_answers) if rank == _mpi.ROOT else None
    items, n_prev = level0, n_answers
    sizes = level_sizes(n_answers, fanin)
    for level, size in enumerate(sizes, 1):
        held = np.bincount(items.index // fanin, minlength=size)
        owners = _mpi.allreduce_argmax(held, comm)
        mine = _exchange(items, owners, fanin, comm)
        groups = np.flatnonzero(owners == rank).astype(np.int64)
        position = np.searchsorted(mine.index // fanin, groups)  # inputs arrive sorted by item
        inputs, left_out = [], np.zeros(len(groups), dtype=np.int64)
        for i, g in enumerate(groups.tolist()):
            span = group_inputs(g, fanin, n_prev)
            start = position[i]
            rows = range(start, start + len(span))
            inputs.append([mine.text[k] for k in rows if mine.ok[k]])
            left_out[i] = len(span) - len(inputs[-1])
        t0 = time.perf_counter()
        results, prompts, shortened, stopped = asyncio.run(combiner.combine(level, groups, inputs))
        combiner.stats.extra["t_reduce"] = combiner.stats.extra.get("t_reduce", 0.0) + time.perf_counter() - t0
        stored = _gather_level(level, results, prompts, n_prev, fanin, left_out, shortened, comm)
        if reduction is not None:
            reduction.levels.append(stored)
        if _mpi.allreduce_any(stopped, comm):
            if reduction is not None:
                reduction.complete = False
            return reduction
        items = Items(groups, results.completion, results.ok.copy())
        n_prev = size
    return _final(reduction, items, bool(sizes), comm)


def _final(reduction: Reduction | None, top: Items, combined: bool, comm) -> Reduction | None:
    """The last remaining output: the top level's one group when anything was ``combined``,
    else the single answer (or none), which then has to travel to the root."""
    if combined:
        if reduction is not None:
            last = reduction.levels[-1].results
            reduction.final, reduction.final_ok, reduction.final_error = last.completion[0], bool(last.ok[0]), last.error[0]
        return reduction
    got = _mpi.gather((top.text, top.ok.tolist()) if len(top.index) else None, comm)
    if reduction is None:
        return None
    held = [g for g in got if g is not None]
    if held:
        texts, ok = held[0]
        reduction.final, reduction.final_ok = texts[0], ok[0]
        reduction.final_error = "" if ok[0] else "the only answer failed"
    else:
        reduction.final_error = "no answer to reduce"
    return reduction
