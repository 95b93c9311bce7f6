"""Token budgets (pure): how long a prompt is, and what fits in the model's context.

Without the model's tokenizer a prompt's length is estimated from its UTF-8 size:
:data:`BYTES_PER_TOKEN` bytes a token is on the safe side of English and code with the BPE
vocabularies of Llama, Qwen or GPT models (3.5-4.5 bytes a token) — the estimate is larger
than the truth there, so what it lets through fits. Where an exact count matters (a tree
reduction's supervisor prompt) the endpoint's ``/tokenize`` is asked first; see
:meth:`mpiswarm.client.EndpointClient.count_tokens`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

#: UTF-8 bytes per token assumed by :func:`estimate_tokens`
BYTES_PER_TOKEN = 3
#: tokens kept free beside the estimate (special tokens, a chat template's wrapping)
MARGIN_TOKENS = 16


def estimate_tokens(text: str) -> int:
    """An estimate of ``text``'s length in tokens: ``ceil(utf8_bytes / BYTES_PER_TOKEN)``."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def room_for_output(prompt_tokens: int, max_model_len: int, margin: int = MARGIN_TOKENS) -> int:
    """Tokens left for the answer beside a prompt of ``prompt_tokens`` (may be <= 0)."""
    return max_model_len - prompt_tokens - margin


def quantize_budget(tokens: int) -> int:
    """``tokens`` rounded down to 1, 2, 3, 4, 6, 8, 12, 16, 24, … (``2**k`` or ``1.5 * 2**k``):
    rows of similar room share a value, so they share calls; at most a third is given up."""
    if tokens < 1:
        return 0
    top = 1 << (tokens.bit_length() - 1)
    half = top >> 1
    return top + half if half and tokens >= top + half else top


@dataclass(frozen=True)
class TokenBudget:
    """``--max-tokens auto``: each prompt's ``max_tokens`` is what fits beside it in the
    context, ``room_for_output(estimate_tokens(prompt), max_model_len)``, at most ``cap``;
    below the cap it is quantized (:func:`quantize_budget`) so that rows of similar length
    share one value and so one call. A prompt that leaves no room gets 0 (:data:`NO_ROOM`):
    it is failed alone, never sent."""

    max_model_len: int
    cap: int | None = None
    margin: int = MARGIN_TOKENS

    def for_prompt(self, prompt: str) -> int:
        """The ``max_tokens`` for ``prompt`` (0: no room at all)."""
        room = room_for_output(estimate_tokens(prompt), self.max_model_len, self.margin)
        if self.cap is not None and room >= self.cap:
            return self.cap
        return quantize_budget(room)

    def overrides(self, prompts: list[str], overrides: list[str]) -> list[str]:
        """Each row's sampling overrides (canonical JSON, '' for none) with its ``max_tokens``
        added; a row that sets its own ``max_tokens`` (or, for chat, ``max_completion_tokens``,
        which vLLM takes over it) keeps it."""
        made: dict[tuple[str, int], str] = {}
        out = []
        for prompt, over in zip(prompts, overrides):
            budget = self.for_prompt(prompt)
            key = (over, budget)
            merged = made.get(key)
            if merged is None:
                decoded = json.loads(over) if over else {}
                if "max_tokens" not in decoded and "max_completion_tokens" not in decoded:
                    decoded["max_tokens"] = budget
                merged = made[key] = json.dumps(decoded, sort_keys=True, separators=(",", ":"))
            out.append(merged)
        return out

    def apply(self, chunk) -> None:
        """Set the ``max_tokens`` of every row of a :class:`~mpiswarm.balance.Chunk` (its
        ``overrides``), before its rows are planned into calls."""
        chunk.overrides = self.overrides(chunk.prompts, chunk.overrides)

    def no_room(self, prompt: str) -> str:
        """The ``error`` of a prompt that leaves no room for an answer."""
        return (f"prompt too long for --max-tokens auto: about {estimate_tokens(prompt)} tokens "
                f"(estimated) and {self.margin} kept free leave no room for an answer in "
                f"max_model_len {self.max_model_len}")


#: the ``max_tokens`` :class:`TokenBudget` gives a prompt that leaves no room for an answer
NO_ROOM = 0
