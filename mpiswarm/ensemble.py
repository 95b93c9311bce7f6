"""Broadcast ensembles (pure): every prompt sent to every endpoint ``repeat`` times.

``--repeat K`` turns an input of P prompts into P x R x K rows for R ranks: row
``(p * R + r) * K + k`` is prompt *p*, answered by rank *r* (its own endpoint), repetition *k*,
sampled with seed ``base + r * K + k`` — every answer of the ensemble has a seed of its own,
and a rank's repetition *k* of all P prompts is one batched call. Rows stay pinned to their
rank (no dynamic schedule), also on a resume.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .inputs import PromptSet


@dataclass
class EnsemblePlan:
    """Which input prompt, rank, repetition and seed each row of the expanded set is."""

    repeat: int
    n_ranks: int
    n_prompts: int
    base_seed: int

    @property
    def n_rows(self) -> int:
        return self.n_prompts * self.n_ranks * self.repeat

    def source_row(self) -> np.ndarray:
        return self.source_of(np.arange(self.n_rows, dtype=np.int64))

    def source_of(self, rows: np.ndarray) -> np.ndarray:
        """The input prompt of each of ``rows``."""
        return np.asarray(rows, dtype=np.int64) // (self.n_ranks * self.repeat)

    def rank(self) -> np.ndarray:
        per_prompt = np.repeat(np.arange(self.n_ranks, dtype=np.int64), self.repeat)
        return np.tile(per_prompt, self.n_prompts)

    def repetition(self) -> np.ndarray:
        return np.tile(np.arange(self.repeat, dtype=np.int64), self.n_prompts * self.n_ranks)

    def seed(self) -> np.ndarray:
        return self.base_seed + self.rank() * self.repeat + self.repetition()

    def rank_order(self, todo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``todo`` (rows still to answer) ordered by the rank that answers them, and the
        count per rank: the slices to scatter."""
        owner = self.rank()[todo]
        order = np.argsort(owner, kind="stable")
        return todo[order], np.bincount(owner, minlength=self.n_ranks)


def expand(prompt_set: PromptSet, n_ranks: int, repeat: int, base_seed: int = 0) -> tuple[PromptSet, EnsemblePlan]:
    """The P x R x K rows of an ensemble over ``prompt_set``; a row's own sampling overrides
    are kept, its seed is the ensemble's. custom_id ``ID/rank-R/rep-K``."""
    plan = EnsemblePlan(repeat, n_ranks, len(prompt_set), base_seed)
    prompts, ids, overrides = [], [], []
    fields = [] if prompt_set.fields is not None else None
    seeds = plan.seed().tolist()
    row = 0
    for p, (prompt, cid, over) in enumerate(zip(prompt_set.prompts, prompt_set.custom_ids, prompt_set.overrides)):
        own = json.loads(over) if over else {}
        for r in range(n_ranks):
            for k in range(repeat):
                prompts.append(prompt)
                ids.append(f"{cid}/rank-{r}/rep-{k}")
                overrides.append(json.dumps({**own, "seed": seeds[row]}, sort_keys=True, separators=(",", ":")))
                if fields is not None:
                    fields.append(prompt_set.fields[p])
                row += 1
    expanded = PromptSet(prompt_set.path, prompts, ids, overrides, fields, prompt_set.sha256)
    return expanded, plan
