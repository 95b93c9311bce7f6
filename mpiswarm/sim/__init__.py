"""A vLLM simulator: OpenAI-compatible endpoints with deterministic answers, no GPU.

For demos, tests and scaling studies of mpiswarm. Each endpoint serves
``/v1/completions`` (prompt lists included), ``/v1/chat/completions``, ``/v1/models``,
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
``usage.prompt_tokens`` and the context check (any prompt with ``count_tokens(prompt) +
max_tokens > max_model_len`` fails its whole list with vLLM's HTTP 400 body). With
``--reasoning split|only`` a chat answer comes as a reasoning model's would, its text cut by
``split_reasoning(text, mode)`` into ``reasoning_content`` (or ``reasoning``) and ``content``.

``/metrics`` counts one engine request per sequence (prompt x choice), as vLLM does, and
adds ``mpiswarm_sim:http_requests_total`` (calls to the two completion routes).
"""
from .faults import FAULT_KINDS, FaultAction, FaultPolicy, draw_fault
from .model import (
    MAX_WORDS,
    WORDS,
    SimConfig,
    chat_prompt,
    context_error,
    count_tokens,
    decode_step_seconds,
    expected_completion,
    prefill_seconds,
    split_reasoning,
)
from .server import (
    LISTENING_PREFIX,
    Endpoint,
    SimHandle,
    SimProcess,
    SimServer,
    find_free_port_block,
    run_in_thread,
    start_process,
)

__all__ = [
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
    "find_free_port_block",
    "prefill_seconds",
    "run_in_thread",
    "split_reasoning",
    "start_process",
]
