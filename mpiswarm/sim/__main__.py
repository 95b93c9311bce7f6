"""``python -m mpiswarm.sim``: serve simulated vLLM endpoints until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import signal
import sys
from collections.abc import Sequence

from .. import stacks
from ..atomic import write_text_atomically
from .faults import FAULT_KINDS
from .model import CONTEXT_CHECKS, ERROR_SHAPES, REASONING_FIELDS, REASONING_MODES, SimConfig
from .process import EXIT_ADDRESS_IN_USE, LISTENING_PREFIX
from .server import SimServer

_DEFAULTS = SimConfig()


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (every :class:`SimConfig` field has an option)."""
    d = _DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m mpiswarm.sim",
        description="Serve simulated vLLM OpenAI-compatible endpoints (no GPU needed). "
                    f"Prints '{LISTENING_PREFIX}URL ...' once all endpoints listen; "
                    "stops on SIGTERM/SIGINT.")
    a = p.add_argument
    a("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    a("--port", type=int, default=8000, metavar="P",
      help="first port; endpoints use P..P+COUNT-1; 0 = any free ports (default %(default)s)")
    a("--count", type=int, default=1, metavar="K", help="independent endpoints (default 1)")
    a("--ready-file", metavar="PATH", help="write the URLs here (one a line, atomically)")
    a("--log-level", default="WARNING", type=str.upper,
      choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="stderr logging (default %(default)s)")
    g = p.add_argument_group("model").add_argument
    g("--model", default=d.model, help="served model name (default %(default)s); requests naming "
      "another model are 404, as vLLM's")
    g("--lora", dest="lora_modules", action="append", default=[], metavar="NAME",
      help="a LoRA adapter served beside the model (its own /v1/models card, parent the model; repeatable)")
    g("--skip-model-name-validation", action="store_true",
      help="serve any model name (vLLM's VLLM_SKIP_MODEL_NAME_VALIDATION=1)")
    g("--max-model-len", type=int, default=d.max_model_len, metavar="N",
      help="context length: a longer prompt is 400, max_tokens is clamped to what is left "
           "(see --context-check; default %(default)s)")
    g("--hide-max-model-len", dest="advertise_max_model_len", action="store_false",
      help="list the model on /v1/models without its max_model_len (as some servers do)")
    g("--max-num-seqs", type=int, default=d.max_num_seqs, metavar="N",
      help="sequences batched at once; more wait (default %(default)s)")
    g = p.add_argument_group("time model").add_argument
    g("--prefill-tps", type=float, default=d.prefill_tps, metavar="X",
      help="prefill tokens per second (default %(default)s)")
    g("--decode-step-s", type=float, default=d.decode_step_s, metavar="S",
      help="seconds per decode step of an empty batch (default %(default)s)")
    g("--decode-step-growth", type=float, default=d.decode_step_growth, metavar="X",
      help="step = decode_step_s * (1 + X * running_seqs) (default %(default)s)")
    g("--time-scale", type=float, default=d.time_scale, metavar="X",
      help="multiplies all simulated times; 0 answers at once (default %(default)s)")
    g("--speed", type=float, default=d.speed, metavar="X",
      help="throughput multiplier (default %(default)s)")
    g("--speeds", type=_floats, metavar="LIST", help="per-endpoint speeds, e.g. 1,1,1,0.25")
    g("--shuffle-choices", action="store_true",
      help="return choices in random order (their indices stay right)")
    g("--reasoning", choices=REASONING_MODES, default=d.reasoning,
      help="chat answers of a reasoning model: split (first half of the words as reasoning, "
           "the rest as content), only (all reasoning, content null); default %(default)s")
    g("--reasoning-field", choices=REASONING_FIELDS, default=d.reasoning_field,
      help="the message key of the reasoning (vLLM >= 0.11: reasoning; older: reasoning_content; "
           "default %(default)s)")
    g("--nul-answers", action="store_true",
      help="every answer holds a U+0000 (its first space, or at its end), as real models' may")
    g("--answer-bytes", type=int, default=d.answer_bytes, metavar="N",
      help="every answer repeated to at least N UTF-8 bytes, as reasoning models' long answers (default 0: as it is)")
    g = p.add_argument_group("vLLM version (defaults: vLLM 0.32; the others: older servers)").add_argument
    g("--error-shape", choices=ERROR_SHAPES, default=d.error_shape,
      help="nested: {\"error\": {message, type, param, code}} (vLLM 0.32); flat: {object: error, message, "
           "type, param, code} (older vLLM); default %(default)s")
    g("--max-prompts-per-call", type=int, default=d.max_prompts_per_call, metavar="N",
      help="a longer prompt list is 400, as vLLM's VLLM_MAX_COMPLETION_PROMPTS; 0: no cap (older vLLM); "
           "default %(default)s")
    g("--no-chat-batch", dest="chat_batch", action="store_false",
      help="no POST /v1/chat/completions/batch (404, as vLLM before 0.32 and llama.cpp)")
    g("--context-check", choices=CONTEXT_CHECKS, default=d.context_check,
      help="prompt: the prompt alone must fit, max_tokens clamped (vLLM 0.32); total: prompt + max_tokens "
           "must fit (older vLLM, 'you requested N tokens'); default %(default)s")
    g = p.add_argument_group("faults (real seconds, reproducible per --fault-seed)").add_argument
    g("--error-rate", type=float, default=d.error_rate, metavar="P",
      help="fraction of completion calls that fail (default %(default)s)")
    g("--error-kinds", type=_words, default=d.error_kinds, metavar="LIST",
      help=f"failure kinds, drawn uniformly, of {','.join(FAULT_KINDS)} (default {','.join(d.error_kinds)}); "
           "the last six are 200s that do not answer every prompt")
    g("--fault-seed", type=int, default=d.fault_seed, metavar="N",
      help="seed of the fault draws (default %(default)s)")
    g("--crash-after", type=int, default=d.crash_after, metavar="N",
      help="after N completion calls: /health 503, later calls dropped")
    g("--slow-start", type=float, default=d.slow_start, metavar="S",
      help="answer 503 for the first S seconds (default %(default)s)")
    g("--jitter", type=float, default=d.jitter, metavar="S",
      help="random 0..S second delay per call (default %(default)s)")
    g("--fault-endpoints", type=_ints, metavar="LIST",
      help="endpoint indices the fault options apply to (default all)")
    return p


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    """The :class:`SimConfig` a parsed command line describes (``ValueError`` if invalid)."""
    return SimConfig(
        model=ns.model, max_model_len=ns.max_model_len, max_num_seqs=ns.max_num_seqs,
        advertise_max_model_len=ns.advertise_max_model_len,
        prefill_tps=ns.prefill_tps, decode_step_s=ns.decode_step_s,
        decode_step_growth=ns.decode_step_growth, time_scale=ns.time_scale, speed=ns.speed,
        speeds=ns.speeds, shuffle_choices=ns.shuffle_choices, error_rate=ns.error_rate,
        error_kinds=ns.error_kinds, fault_seed=ns.fault_seed, crash_after=ns.crash_after,
        slow_start=ns.slow_start, jitter=ns.jitter, fault_endpoints=ns.fault_endpoints,
        reasoning=ns.reasoning, reasoning_field=ns.reasoning_field,
        lora_modules=tuple(ns.lora_modules), skip_model_name_validation=ns.skip_model_name_validation,
        nul_answers=ns.nul_answers, error_shape=ns.error_shape, max_prompts_per_call=ns.max_prompts_per_call,
        chat_batch=ns.chat_batch,
        context_check=ns.context_check, answer_bytes=ns.answer_bytes,
    )


async def serve(config: SimConfig, ns: argparse.Namespace) -> int:
    """Listen, announce the URLs, and serve until SIGTERM/SIGINT; returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = SimServer(config, ns.count, ns.host, ns.port)
    try:
        urls = await server.start()
    except OSError as exc:
        print(f"mpiswarm.sim: cannot listen on {ns.host} port {ns.port} "
              f"(count {ns.count}): {exc}", file=sys.stderr, flush=True)
        return EXIT_ADDRESS_IN_USE if exc.errno == errno.EADDRINUSE else 1
    try:
        if ns.ready_file:  # before the listening line, so whoever waits on the line finds the file
            write_text_atomically(ns.ready_file, "".join(u + "\n" for u in urls))
        print(LISTENING_PREFIX + " ".join(urls), flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m mpiswarm.sim``."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        config = config_from_args(ns)
        config.check_count(ns.count)
    except ValueError as exc:
        parser.error(str(exc))
    if ns.port and not 0 < ns.port <= 65536 - ns.count:
        parser.error(f"ports {ns.port}..{ns.port + ns.count - 1} are out of range")
    logging.basicConfig(level=ns.log_level,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stacks.install("mpiswarm.sim")  # kill -USR2: what its calls wait for
    return asyncio.run(serve(config, ns))


if __name__ == "__main__":
    sys.exit(main())
