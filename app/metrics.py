"""Every Prometheus metric semsearch exports, defined once.

Names are the contract with the alert rules and the dashboard under deploy/; a test scrapes
the services and checks that every name those files use exists.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "semsearch_http_requests_total",
    "HTTP requests answered, by service, route template, method and status.",
    ["service", "route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "semsearch_http_request_duration_seconds",
    "Time to answer an HTTP request, by service and route template.",
    ["service", "route", "method"],
    buckets=LATENCY_BUCKETS,
)
SEARCH_STAGE_LATENCY = Histogram(
    "semsearch_search_stage_duration_seconds",
    "Time spent in each stage of the search path (cache, embed, ann, rerank, total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
SEARCHES = Counter(
    "semsearch_searches_total",
    "Searches answered, by outcome (full, degraded, cached, error).",
    ["outcome"],
)
SEARCH_DEGRADED = Counter(
    "semsearch_search_degraded_total",
    "Searches answered without a stage, by the stage skipped.",
    ["stage"],
)
CACHE_REQUESTS = Counter(
    "semsearch_cache_requests_total",
    "Result cache lookups and stores, by operation and result (hit, miss, stored, error).",
    ["operation", "result"],
)
MODEL_LOAD_SECONDS = Gauge(
    "semsearch_model_load_seconds",
    "Seconds the last model load took, by kind (embedding, reranker) and model.",
    ["kind", "model"],
)
MODEL_READY = Gauge(
    "semsearch_model_ready",
    "1 when the model is loaded and serving, 0 while loading or after a failed load.",
    ["kind", "model"],
)
MODEL_ITEMS = Counter(
    "semsearch_model_items_total",
    "Texts (embedding) or pairs (reranker) run through a model.",
    ["kind"],
)
MODEL_COMPUTE_LATENCY = Histogram(
    "semsearch_model_compute_duration_seconds",
    "Time of one model forward call (a batch), by kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
INDEX_DOCUMENTS = Gauge(
    "semsearch_index_documents",
    "Documents in the served generation, by collection.",
    ["collection"],
)
INDEX_GENERATION = Gauge(
    "semsearch_index_generation",
    "Generation number being served, by collection.",
    ["collection"],
)
