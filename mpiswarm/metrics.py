"""An endpoint's Prometheus ``/metrics``: parsing (pure) and the deltas a run stores per rank."""
from __future__ import annotations

import math

#: what a rank stores, from vLLM's metric names (counters and histogram sums, summed over labels)
ENGINE_METRICS = {
    "engine_prompt_tokens": "vllm:prompt_tokens_total",
    "engine_generation_tokens": "vllm:generation_tokens_total",
    "engine_preemptions": "vllm:num_preemptions_total",
    "engine_requests": "vllm:request_success_total",
    "engine_queue_time_s": "vllm:request_queue_time_seconds_sum",
    "engine_e2e_latency_s": "vllm:e2e_request_latency_seconds_sum",
}


def parse_prometheus(text: str) -> dict[str, float]:
    """``{metric name: value summed over its label sets}`` from Prometheus' text format."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, rest = line.rpartition("}") if "}" in line else ("", "", line)
        if name_and_labels:
            name = name_and_labels.split("{", 1)[0]
            fields = rest.split()
        else:
            name, *fields = line.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            values[name] = values.get(name, 0.0) + value
    return values


def engine_deltas(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    """What the engine did between two readings, under :data:`ENGINE_METRICS`' names
    (-1 where the endpoint does not export the metric or could not be read)."""
    out = {}
    for field, metric in ENGINE_METRICS.items():
        if before is None or after is None or metric not in after:
            out[field] = -1.0
        else:
            out[field] = after[metric] - before.get(metric, 0.0)
    return out
