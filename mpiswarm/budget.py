"""Token budgets (pure): how long a prompt is, and what fits in the model's context.

Without the model's tokenizer a prompt's length is estimated from its UTF-8 size:
:data:`BYTES_PER_TOKEN` bytes a token is on the safe side of English and code with the BPE
vocabularies of Llama, Qwen or GPT models (3.5-4.5 bytes a token) — the estimate is larger
than the truth there, so what it lets through fits. Where an exact count matters (a tree
reduction's supervisor prompt) the endpoint's ``/tokenize`` is asked first; see
:meth:`mpiswarm.client.EndpointClient.count_tokens`.
"""
from __future__ import annotations

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
