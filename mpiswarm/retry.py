"""Retry policy: what a failed call means, and how long to wait before the next attempt.

A small object in the spirit of tenacity: the policy decides, the caller sleeps with its own
(injectable) sleep, so tests never really wait.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import CallError, StatusError

#: the call may succeed if tried again (5xx, 429, timeouts, dropped connections, garbled replies)
TRANSIENT = "transient"
#: the request itself is bad (400/413/422: e.g. a prompt longer than max_model_len)
CLIENT_ERROR = "client_error"
#: retrying cannot help and bisecting cannot isolate it (401, 403, 404, …)
FATAL = "fatal"


def classify(exc: BaseException) -> str:
    """Which of :data:`TRANSIENT`, :data:`CLIENT_ERROR` or :data:`FATAL` ``exc`` is."""
    if isinstance(exc, StatusError):
        status = exc.status_code
        if status == 429 or status >= 500 or status == 408:
            return TRANSIENT
        if status in (400, 413, 422):
            return CLIENT_ERROR
        return FATAL
    if isinstance(exc, (CallError, ValueError, KeyError, TypeError)):
        return TRANSIENT  # includes timeouts; a garbled reply is worth another try
    return FATAL


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with equal jitter (a delay drawn from ``[c/2, c]`` of the ceiling ``c``,
    so retries spread out without ever firing at once), bounded in attempts and in time."""

    max_attempts: int = 6  # on one endpoint, the first try included
    max_elapsed_s: float = 900.0  # since the call's first attempt
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * self.multiplier ** (attempt - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)

    def should_retry(self, attempt: int, elapsed_s: float, next_delay_s: float = 0.0) -> bool:
        """Whether attempt ``attempt + 1`` may start (after waiting ``next_delay_s``)."""
        return attempt < self.max_attempts and elapsed_s + next_delay_s <= self.max_elapsed_s
