"""A vLLM simulator: OpenAI-compatible endpoints with deterministic answers, no GPU.

For demos, tests and scaling studies of mpiswarm. Each endpoint serves
``/v1/completions`` (prompt lists included), ``/v1/chat/completions``,
``/v1/chat/completions/batch`` (a list of conversations, one choice each, ``n`` 1; ``--no-chat-batch``
hides it, as older servers), ``/v1/models``,
``/health`` and ``/metrics`` (vLLM's metric names), batches requests like vLLM's
continuous batching (see :mod:`mpiswarm.sim.model`), and can inject faults
(see :mod:`mpiswarm.sim.faults`).

Command line::

    python -m mpiswarm.sim --port 8000 --count 4 --speeds 1,1,1,0.25 --time-scale 0.1
    # prints: mpiswarm.sim listening on http://127.0.0.1:8000/v1 ... http://127.0.0.1:8003/v1
    python -m mpiswarm.sim --port 0 --time-scale 0            # one instant endpoint, any port
    python -m mpiswarm.sim --port 8000 --count 2 --error-rate 0.1 --error-kinds 500,drop \\
        --fault-endpoints 1 --fault-seed 7

It stops on SIGTERM/SIGINT (exit status 0); ``--help`` lists every option.

Python::

    from mpiswarm.sim import SimConfig, expected_completion, run_in_thread, start_process

    with run_in_thread(SimConfig(time_scale=0), count=2) as sim:
        sim.urls            # ["http://127.0.0.1:P/v1", "http://127.0.0.1:Q/v1"]
        ...                 # POST {"prompt": ["a", "b"], "max_tokens": 8} to sim.urls[0]
        sim.stats(0)        # {"http_requests": 1, "prompts": 2, ...}
    text, finish_reason, n_tokens = expected_completion("a", max_tokens=8)

    with start_process(["--count", "3", "--time-scale", "0"]) as proc:  # a subprocess
        proc.urls, proc.pid

Answers depend only on ``(prompt, seed, j, max_tokens, stop)``: choice ``index`` is
``prompt_index * n + j``; a chat request's prompt is ``chat_prompt(messages)``;
``count_tokens(text)`` (``ceil(utf8_bytes / 4)``) is the prompt-token estimate, used for
``usage.prompt_tokens`` and the context check. With ``--reasoning split|only`` a chat answer
comes as a reasoning model's would, its text cut by ``split_reasoning(text, mode)`` into
``reasoning`` (or ``--reasoning-field reasoning_content``) and ``content``; ``--nul-answers``
puts a U+0000 in every answer.

By default it answers as vLLM 0.32's OpenAI server does (read from its source; see
:func:`~mpiswarm.sim.model.sampling_error` and :func:`~mpiswarm.sim.model.prompt_context_error`):
errors nested, ``{"error": {"message", "type", "param", "code"}}``; a model it does not serve
(``--model``, ``--lora`` adapters) is 404 ``The model `X` does not exist. Valid aliases: …``;
sampling values ``SamplingParams`` refuses (greedy ``n > 1``, ``top_p`` outside (0, 1],
``temperature`` outside [0, 2], …) are 400 with vLLM's message; a ``prompt`` list longer than
``--max-prompts-per-call`` (1024, vLLM's ``VLLM_MAX_COMPLETION_PROMPTS``) is 400; a prompt longer
than ``max_model_len`` fails its whole list with 400, ``max_tokens`` is clamped to what the context
leaves; the other options of :mod:`mpiswarm.options` are refused by its table, in vLLM's error
shape (:mod:`mpiswarm.sim.refusals`: a value of the wrong type as pydantic words it, ``"Bad
Request"`` at ``body.<key>``; one out of range ``BadRequestError`` with vLLM's ``param``, the
message mpiswarm's one line); ``min_tokens`` over the clamped ``max_tokens`` with vLLM's words.
Structured outputs are answered with a valid value (``choice``, ``json`` / ``json_schema`` for a
JSON-Schema subset, ``json_object``, ``regex`` and non-recursive GBNF ``grammar`` through
:mod:`mpiswarm.sim.pattern`; what it cannot generate is a 400 naming it); logprobs in vLLM's
shapes (:func:`~mpiswarm.sim.model.expected_logprobs`). Older servers' behaviour: ``--error-shape flat``, ``--reasoning-field reasoning_content``,
``--max-prompts-per-call 0`` (no cap), ``--context-check total`` (prompt + ``max_tokens`` must fit).

``/metrics`` counts one engine request per sequence (prompt x choice), as vLLM does, and
adds ``mpiswarm_sim:http_requests_total`` (calls to the two completion routes).
"""
from .faults import BAD_REPLY_KINDS, FAULT_KINDS, FaultAction, FaultPolicy, draw_fault, spoil_reply
from .model import (
    DEFAULT_MAX_PROMPTS,
    MAX_WORDS,
    WORDS,
    SimConfig,
    chat_prompt,
    context_error,
    count_tokens,
    decode_step_seconds,
    expected_completion,
    expected_logprobs,
    prefill_seconds,
    prompt_context_error,
    sampling_error,
    split_reasoning,
)
from ..engines.process import find_free_port_block
from .endpoint import Endpoint
from .process import LISTENING_PREFIX, SimProcess, start_process
from .server import SimHandle, SimServer, run_in_thread

__all__ = [
    "BAD_REPLY_KINDS",
    "DEFAULT_MAX_PROMPTS",
    "FAULT_KINDS",
    "LISTENING_PREFIX",
    "MAX_WORDS",
    "WORDS",
    "Endpoint",
    "FaultAction",
    "FaultPolicy",
    "SimConfig",
    "SimHandle",
    "SimProcess",
    "SimServer",
    "chat_prompt",
    "context_error",
    "count_tokens",
    "decode_step_seconds",
    "draw_fault",
    "expected_completion",
    "expected_logprobs",
    "find_free_port_block",
    "prefill_seconds",
    "prompt_context_error",
    "run_in_thread",
    "sampling_error",
    "split_reasoning",
    "spoil_reply",
    "start_process",
]
