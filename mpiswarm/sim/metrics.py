"""The metrics of one simulated endpoint: vLLM's ``/metrics`` page and the test counters.

:class:`Metrics` holds vLLM-named counters and histograms (:class:`Histogram`), plus the
simulator's extras, and renders them in Prometheus text format; :class:`EndpointStats` holds
the counters tests and studies read through :meth:`~mpiswarm.sim.server.SimHandle.stats`.
"""
from __future__ import annotations

import dataclasses
from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence

LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0,
    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)


class Histogram:
    """A Prometheus histogram (non-cumulative counts, rendered cumulatively)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` ``times`` times."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def lines(self, name: str, labels: str) -> list[str]:
        """Exposition lines ``name_bucket{le=…}``, ``name_sum``, ``name_count``."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, "+Inf"), self.counts):
            total += n
            le = bound if isinstance(bound, str) else repr(float(bound))
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {float(total)}')
        out.append(f"{name}_sum{{{labels}}} {self.sum}")
        out.append(f"{name}_count{{{labels}}} {float(self.count)}")
        return out


class Metrics:
    """vLLM-named counters and histograms of one endpoint, plus simulator extras."""

    def __init__(self, model: str):
        escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        self.model_label = f'model_name="{escaped}"'
        # vLLM >= 0.11 labels every engine metric with its engine index (one engine here).
        self.labels = f'engine="0",{self.model_label}'
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.preemptions = 0  # the simulator admits by sequence count, so never preempts
        self.success: Counter[str] = Counter()
        self.http_requests = 0
        self.faults_injected = 0
        self.prompts_received = 0
        self.health_checks = 0
        self.e2e = Histogram()
        self.queue_time = Histogram()

    def render(self, running: int, waiting: int, kv_usage: float) -> str:
        """The ``/metrics`` page (Prometheus text format 0.0.4)."""
        lb = self.labels
        out: list[str] = []

        def family(name: str, kind: str, help_: str, samples: list[str]) -> None:
            out.extend((f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples))

        def single(name: str, kind: str, help_: str, value: float) -> None:
            family(name, kind, help_, [f"{name}{{{lb}}} {float(value)}"])

        single("vllm:num_requests_running", "gauge",
               "Number of requests in model execution batches.", running)
        single("vllm:num_requests_waiting", "gauge",
               "Number of requests waiting to be processed.", waiting)
        single("vllm:kv_cache_usage_perc", "gauge",
               "KV-cache usage. 1 means 100 percent usage.", kv_usage)
        single("vllm:prompt_tokens_total", "counter",
               "Number of prefill tokens processed.", self.prompt_tokens)
        single("vllm:generation_tokens_total", "counter",
               "Number of generation tokens processed.", self.generation_tokens)
        single("vllm:num_preemptions_total", "counter",
               "Cumulative number of preemption from the engine.", self.preemptions)
        name = "vllm:request_success_total"
        family(name, "counter", "Count of successfully processed requests.",
               [f'{name}{{engine="0",finished_reason="{reason}",{self.model_label}}} '
                f'{float(self.success[reason])}' for reason in ("stop", "length", "abort", "error")])
        name = "vllm:e2e_request_latency_seconds"
        family(name, "histogram", "Histogram of e2e request latency in seconds.",
               self.e2e.lines(name, lb))
        name = "vllm:request_queue_time_seconds"
        family(name, "histogram", "Histogram of time spent in WAITING phase for request.",
               self.queue_time.lines(name, lb))
        single("mpiswarm_sim:http_requests_total", "counter",
               "HTTP calls to the completion routes, whatever their outcome.", self.http_requests)
        single("mpiswarm_sim:prompts_received_total", "counter",
               "Prompts in well-formed completion calls, whether answered or not.", self.prompts_received)
        single("mpiswarm_sim:faults_injected_total", "counter",
               "Completion calls given a fault of --error-kinds (bad replies included).", self.faults_injected)
        single("mpiswarm_sim:health_checks_total", "counter",
               "GET /health calls, whatever the answer (200 serving, 503 starting or crashed).", self.health_checks)
        out.append("")
        return "\n".join(out)


@dataclasses.dataclass
class EndpointStats:
    """Per-endpoint counters for tests and studies (see :meth:`SimHandle.stats`)."""

    http_requests: int = 0  # calls to the completion routes, whatever their outcome
    responses_ok: int = 0  # calls answered 200
    bad_requests: int = 0  # calls answered 400
    not_found: int = 0  # calls answered 404 (a model this endpoint does not serve)
    prompts: int = 0  # prompts answered
    choices: int = 0  # choices answered (prompts x n)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rejected_starting: int = 0  # 503 during slow start
    dropped_crashed: int = 0  # connections dropped after a crash
    faults: Counter = dataclasses.field(default_factory=Counter)  # injected, by kind

    def snapshot(self) -> dict:
        """A plain-dict copy."""
        out = dataclasses.asdict(self)
        out["faults"] = dict(self.faults)
        return out
