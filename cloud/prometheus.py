"""Prometheus metrics for the cloud service (``GET /metrics``, text exposition format).

Under gunicorn every worker is its own process: ``cloud.serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
directory before the workers start, so each worker writes its samples to memory-mapped files there and
``/metrics`` (answered by any worker) aggregates all of them (prometheus_client multiprocess mode);
``cloud.gunicorn_conf`` marks dead workers. Without that variable (tests, the Flask dev server) the
process-local default registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("edge_rerank_http_requests_total", "HTTP requests by route, method and status",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("edge_rerank_http_request_duration_seconds", "Time in the Flask app per request, by route",
                    ["endpoint"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
EMBEDDING_LOOKUPS = Counter("edge_rerank_embedding_lookups_total",
                            "Embedding store lookups for pages, by store and result (miss = default row served)",
                            ["store", "result"])
RANKING_CACHE = Counter("edge_rerank_ranking_cache_total",
                        "Search requests served from a precomputed ranking (hit) or ranked anew (miss)", ["result"])
LOG_ROWS = Counter("edge_rerank_log_rows_total", "Impression-log rows acknowledged (fsynced)")
MODEL_EVENTS = Counter("edge_rerank_model_events_total", "Registry operations", ["event"])


_children: dict[tuple, object] = {}  # labelled children, looked up once (labels() is not free)


def observe_latency(endpoint: str, seconds: float) -> None:
    key = ("lat", endpoint)
    c = _children.get(key)
    if c is None:
        c = _children[key] = LATENCY.labels(endpoint)
    c.observe(seconds)


def count_request(endpoint: str, method: str, status: int) -> None:
    key = ("req", endpoint, method, status)
    c = _children.get(key)
    if c is None:
        c = _children[key] = REQUESTS.labels(endpoint, method, str(status))
    c.inc()


def count_cache(hit: bool) -> None:
    key = ("cache", hit)
    c = _children.get(key)
    if c is None:
        c = _children[key] = RANKING_CACHE.labels("hit" if hit else "miss")
    c.inc()


def count_embedding_lookups(store: str, found: int, missing: int) -> None:
    for result, n in (("hit", found), ("miss", missing)):
        if n:
            key = ("emb", store, result)
            c = _children.get(key)
            if c is None:
                c = _children[key] = EMBEDDING_LOOKUPS.labels(store, result)
            c.inc(n)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def render() -> tuple[bytes, str]:
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
