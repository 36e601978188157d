"""`GET /metrics`: Prometheus's text format, from a registry of the app's own (several apps in
one process, as in the tests, never share series).

Counters and histograms are fed once per request from its `RequestStats` (observe.py); the
scheduler's state (queue, slots, loaded models) is sampled when scraped rather than tracked
wherever it changes; the scheduler reports each load's time through its `on_load` hook. Only
this module knows prometheus_client: the layers below expose plain numbers.
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ollamalite.generation.stats import RequestStats
from ollamalite.runtime.engine.prompt_cache import PromptCache
from ollamalite.runtime.scheduler import Scheduler
from ollamalite.server import openapi
from ollamalite.server.keys import SCHEDULER, SETTINGS

# CPU inference: a short prompt's first token in tens of milliseconds, a long prompt's (or one
# waiting behind a model load) in tens of seconds.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# From a small model's 200 tokens/s to a large one's (or a busy batch's) 1 token/s and slower.
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
# A small model from the page cache loads in well under a second; a large one from disk, minutes.
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


def family(path: str) -> str:
    """Which API a path belongs to (the `family` label of the request counter): that of its
    error shape under /api and /v1, `other` elsewhere (`/`, `/metrics`)."""
    return openapi.api_of(path) if path.startswith(("/api/", "/v1/")) else "other"


class SchedulerGauges(Collector):
    """The scheduler's state, read on the event loop (which owns it) at each scrape."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        loaded = self.scheduler.loaded
        busy, total = Tally[str](), Tally[str]()
        for runner in loaded:  # a model being reloaded is resident twice for a while
            busy[runner.entry.name] += runner.engine.busy_slots
            total[runner.entry.name] += runner.engine.n_slots
        yield GaugeMetricFamily("ollamalite_queue_depth", "Requests waiting for a model load "
                                "or a free slot", value=self.scheduler.waiting)
        yield GaugeMetricFamily("ollamalite_models_loaded", "Models holding memory (as "
                                "/api/ps lists them)", value=len(loaded))
        yield _by_model("ollamalite_slots_busy", "Slots generating for a request", busy)
        yield _by_model("ollamalite_slots", "Slots of the loaded models", total)
        yield from _prompt_cache(self.scheduler.prompt_cache)


def _prompt_cache(cache: PromptCache | None) -> Iterator[Metric]:
    """The host-memory prompt cache (docs/engine.md), when it is on."""
    if cache is None:
        return
    yield GaugeMetricFamily("ollamalite_prompt_cache_bytes", "Bytes of KV state the "
                            "host-memory prompt cache holds", value=cache.bytes)
    yield GaugeMetricFamily("ollamalite_prompt_cache_capacity_bytes", "The host-memory "
                            "prompt cache's bound", value=cache.capacity)
    yield GaugeMetricFamily("ollamalite_prompt_cache_entries", "Saved prefixes in the "
                            "host-memory prompt cache", value=len(cache))
    yield CounterMetricFamily("ollamalite_prompt_cache_restored_tokens", "Prompt tokens "
                              "restored from host memory or disk, not evaluated again",
                              value=cache.restored_tokens)
    if cache.disk is not None:
        yield GaugeMetricFamily("ollamalite_prompt_cache_disk_bytes", "Bytes of the prompt "
                                "cache's files (OLLAMALITE_CACHE_DISK)", value=cache.disk.bytes)
        yield GaugeMetricFamily("ollamalite_prompt_cache_disk_entries", "Saved prefixes in "
                                "the prompt cache's files", value=len(cache.disk))


def _by_model(name: str, documentation: str, values: Tally[str]) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["model"])
    for model, value in sorted(values.items()):
        gauge.add_metric([model], value)
    return gauge


class Metrics:
    """The app's metrics; `observe` takes each finished request."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        self.requests = self._counter("requests", "HTTP requests", ("family", "status"))
        self.prompt_tokens = self._counter("prompt_tokens", "Prompt tokens evaluated")
        self.generated_tokens = self._counter("generated_tokens", "Tokens generated")
        self.reused_tokens = self._counter("prefix_cache_reused_tokens", "Prompt tokens "
                                           "found in a slot's cache, not evaluated again")
        self.drafted_tokens = self._counter("speculative_drafted_tokens", "Tokens drafted "
                                            "by n-gram lookup and checked by the model")
        self.accepted_tokens = self._counter("speculative_accepted_tokens", "Drafted tokens "
                                             "the sampler picked too (kept)")
        self.ttft = self._histogram("time_to_first_token_seconds", "From a request's arrival "
                                    "to its first generated token", TTFT_BUCKETS)
        self.inter_token = self._histogram("inter_token_seconds", "Between generated tokens, "
                                           "as the server received them", INTER_TOKEN_BUCKETS)
        self.load = self._histogram("model_load_seconds", "Loading a model", LOAD_BUCKETS)
        self.registry.register(SchedulerGauges(scheduler))
        scheduler.on_load = lambda model, seconds: self.load.labels(model).observe(seconds)

    def _counter(self, name: str, documentation: str,
                 labels: tuple[str, ...] = ("model",)) -> Counter:
        return Counter(f"ollamalite_{name}", documentation, labels, registry=self.registry)

    def _histogram(self, name: str, documentation: str, buckets: tuple[float, ...]
                   ) -> Histogram:
        return Histogram(f"ollamalite_{name}", documentation, ["model"], buckets=buckets,
                         registry=self.registry)

    def observe(self, path: str, status: int, stats: RequestStats) -> None:
        self.requests.labels(family(path), str(status)).inc()
        if not stats.model:
            return
        model = stats.model
        self.prompt_tokens.labels(model).inc(stats.prompt_tokens)
        self.generated_tokens.labels(model).inc(stats.generated_tokens)
        self.reused_tokens.labels(model).inc(stats.reused_tokens)
        self.drafted_tokens.labels(model).inc(stats.drafted_tokens)
        self.accepted_tokens.labels(model).inc(stats.accepted_tokens)
        if stats.ttft is not None:
            self.ttft.labels(model).observe(stats.ttft)
        inter_token = self.inter_token.labels(model)
        for gap in stats.token_gaps:
            inter_token.observe(gap)


METRICS = web.AppKey("metrics", Metrics)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = (openapi.Route("GET", "/metrics", metrics, "Counters, histograms and gauges in "
                        "Prometheus's text format (docs/operations.md).",
                        replies=(openapi.Reply(200, "Success.", (openapi.TEXT,)),)),)


def add_routes(app: web.Application) -> None:
    """`/metrics` and what feeds it, unless OLLAMALITE_METRICS=0 (then it is a 404)."""
    if app[SETTINGS].metrics:
        app[METRICS] = Metrics(app[SCHEDULER])
        openapi.add_routes(app, ROUTES)
