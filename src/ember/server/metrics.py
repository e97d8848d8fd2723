"""Prometheus metrics of `ember serve`, named in vLLM's spirit with an `ember:` prefix.

    curl -s localhost:8000/metrics | grep '^ember:'

Each app gets its own CollectorRegistry (two apps in one process, as in tests, do not collide). Gauges that
mirror live state (running, waiting, cache usage) are computed when scraped, so they can never drift.
"""

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LAT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_TPOT = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
M = ["model_name"]


@dataclass
class Metrics:
    registry: CollectorRegistry
    ttft: Histogram
    tpot: Histogram
    e2e: Histogram
    queue_time: Histogram
    prompt_tokens: Counter
    cached_tokens: Counter
    generation_tokens: Counter
    success: Counter
    aborted: Counter
    rejected: Counter
    http: Counter

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveGauges:
    """Collector reading running/waiting/cache usage from the served models at scrape time."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        running = GaugeMetricFamily("ember:num_requests_running", "Requests generating right now.", labels=M)
        waiting = GaugeMetricFamily("ember:num_requests_waiting", "Requests admitted to the queue, waiting for "
                                    "a slot.", labels=M)
        cache = GaugeMetricFamily("ember:cache_usage_perc", "Fraction of KV-cache slots in use (0-1).", labels=M)
        # Speculative decoding (serve --speculative), vLLM's spec_decode counters; acceptance rate is
        # num_accepted_tokens / num_draft_tokens.
        spec = {k: CounterMetricFamily(f"ember:spec_decode_{k}", help_, labels=M) for k, help_ in (
            ("num_drafts", "Speculative drafts verified."), ("num_draft_tokens", "Draft tokens proposed."),
            ("num_accepted_tokens", "Draft tokens accepted."))}
        for served in self.pool.all():
            running.add_metric([served.id], served.admission.running)
            waiting.add_metric([served.id], served.admission.waiting)
            if served.engine is not None:
                cache.add_metric([served.id], float(served.engine.cache_usage))
                if getattr(served.engine, "spec", None) is not None:  # the vLLM backend keeps its own counters
                    for k, fam in spec.items():
                        fam.add_metric([served.id], getattr(served.engine.spec_stats, k))
        yield running
        yield waiting
        yield cache
        yield from spec.values()


def create(pool) -> Metrics:
    r = CollectorRegistry()
    r.register(_LiveGauges(pool))
    return Metrics(
        registry=r,
        ttft=Histogram("ember:time_to_first_token_seconds", "Time to first token.", M, buckets=_LAT, registry=r),
        tpot=Histogram("ember:time_per_output_token_seconds", "Time per output token after the first.", M,
                       buckets=_TPOT, registry=r),
        e2e=Histogram("ember:e2e_request_latency_seconds", "End-to-end request latency.", M, buckets=_LAT,
                      registry=r),
        queue_time=Histogram("ember:request_queue_time_seconds", "Time waiting in the admission queue.", M,
                             buckets=_LAT, registry=r),
        prompt_tokens=Counter("ember:prompt_tokens", "Prompt tokens processed.", M, registry=r),
        cached_tokens=Counter("ember:prompt_tokens_cached", "Prompt tokens reused from the cache, not computed.", M,
                              registry=r),
        generation_tokens=Counter("ember:generation_tokens", "Tokens generated.", M, registry=r),
        success=Counter("ember:request_success", "Requests finished, by finish reason.",
                        M + ["finished_reason"], registry=r),
        aborted=Counter("ember:request_aborted", "Requests aborted (client disconnected or shutdown).", M,
                        registry=r),
        rejected=Counter("ember:request_rejected", "Requests refused with 429 (queue full).", M, registry=r),
        http=Counter("ember:http_requests", "HTTP requests by route and status.", ["route", "status"],
                     registry=r),
    )
