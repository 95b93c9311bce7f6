"""Aggregators for an ensemble's answers (pure): majority vote with its share, concatenation,
counts of failures — for ``--repeat`` runs and for records from the Python API.

Each takes the answers as strings, with ``ok`` flags (failed answers are left out and
counted) or records (dicts with ``completion`` and ``ok``, as :func:`mpiswarm.scatter_gather`
returns them).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence


class VoteCounter:
    """Majority votes per input prompt, added up a block of rows at a time (the root sees the
    ensemble's rows in rounds; in a virtual layout each writer counts its block's and the root
    merges them). Only the prompts seen take memory."""

    def __init__(self, n_prompts: int):
        self.n_prompts = n_prompts
        self.counts: dict[int, Counter] = {}
        self.first_form: dict[int, dict] = {}
        self.n_failed: Counter = Counter()

    def add(self, source_rows, completions, ok) -> None:
        for p, text, good in zip(source_rows, completions, ok):
            if not good:
                self.n_failed[p] += 1
                continue
            key = normalize(text)
            counts = self.counts.get(p)
            if counts is None:
                counts = self.counts[p] = Counter()
                self.first_form[p] = {}
            counts[key] += 1
            self.first_form[p].setdefault(key, text)

    def merge(self, other: "VoteCounter") -> None:
        """Add ``other``'s votes (counted on rows after this counter's: first forms kept)."""
        for p, counts in other.counts.items():
            self.counts.setdefault(p, Counter()).update(counts)
            forms = self.first_form.setdefault(p, {})
            for key, text in other.first_form[p].items():
                forms.setdefault(key, text)
        self.n_failed.update(other.n_failed)

    def votes(self) -> list["Vote"]:
        out = []
        for p in range(self.n_prompts):
            counts = self.counts.get(p)
            if not counts:
                out.append(Vote("", 0.0, 0, 0, int(self.n_failed[p])))
                continue
            total = sum(counts.values())
            key, n = counts.most_common(1)[0]
            out.append(Vote(self.first_form[p][key].strip(), n / total, n, total, int(self.n_failed[p])))
        return out


@dataclass(frozen=True)
class Vote:
    """A majority vote: the winning answer (as first given), its share of the valid answers,
    its votes, the valid answers and the failed ones (left out)."""

    answer: str
    share: float
    votes: int
    n_valid: int
    n_failed: int


def normalize(text: str) -> str:
    """What two answers must share to count as the same vote: case and surrounding space aside."""
    return " ".join(text.split()).lower()


def _answers(answers, ok) -> tuple[list[str], list[bool]]:
    answers = list(answers)
    if answers and isinstance(answers[0], dict):  # records
        return [r["completion"] for r in answers], [bool(r["ok"]) for r in answers]
    return answers, [True] * len(answers) if ok is None else [bool(x) for x in ok]


def majority_vote(answers: Sequence, ok: Iterable[bool] | None = None) -> Vote:
    """The most frequent answer (compared by :func:`normalize`; the first on a tie) and its
    share of the answers that did not fail."""
    texts, flags = _answers(answers, ok)
    counter = VoteCounter(1)
    counter.add([0] * len(texts), texts, flags)
    return counter.votes()[0]


def concat(answers: Sequence, ok: Iterable[bool] | None = None, separator: str = "\n") -> str:
    """The answers that did not fail, joined by ``separator``."""
    texts, flags = _answers(answers, ok)
    return separator.join(t for t, good in zip(texts, flags) if good)


def failure_counts(records: Sequence[dict]) -> dict:
    """``{"total", "ok", "failed", "errors": {error: count}}`` of records."""
    errors = Counter(r["error"] for r in records if not r["ok"])
    failed = sum(errors.values())
    return {"total": len(records), "ok": len(records) - failed, "failed": failed, "errors": dict(errors)}
