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
    "Time to answer an HTTP request, by service, route template and status (so that fast "
    "refusals under overload do not hide how long admitted requests take).",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
SEARCH_STAGE_LATENCY = Histogram(
    "semsearch_search_stage_duration_seconds",
    "Time spent in each stage of the search path (cache, embed, ann, lexical, rerank, total).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
SEARCHES = Counter(
    "semsearch_searches_total",
    "Searches answered, by outcome (full, degraded, cached, error).",
    ["outcome"],
)
SEARCH_MODES = Counter(
    "semsearch_search_mode_total",
    "Searches answered (not from the cache), by what the first stage was: hybrid, dense or "
    "lexical (a hybrid search degraded to one list counts as that list).",
    ["mode"],
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
CLIENT_DISCONNECTS = Counter(
    "semsearch_client_disconnects_total",
    "Requests whose client went away before the answer; their queued work was dropped.",
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

# -- dynamic batching (app.models.batching); `kind` is embedding or reranker -----------------------
BATCH_QUEUE_DEPTH = Gauge(
    "semsearch_batch_queue_depth",
    "Items waiting for a batch, by model kind.",
    ["kind"],
)
BATCH_QUEUE_SECONDS = Histogram(
    "semsearch_batch_queue_seconds",
    "Time an item waited in the queue before its batch started, by model kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
BATCH_COMPUTE_SECONDS = Histogram(
    "semsearch_batch_compute_seconds",
    "Time of one batch on the model, by model kind. Queue time over compute time is the "
    "saturation signal autoscalers use.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "semsearch_batch_size",
    "Items per batch, by model kind.",
    ["kind"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_TOKENS = Histogram(
    "semsearch_batch_tokens",
    "Padded tokens per batch (longest item x items), by model kind.",
    ["kind"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)

AUTO_TRUNCATED = Counter(
    "semsearch_auto_truncated_requests_total",
    "Requests whose over-long inputs were cut to the model's window because the service "
    "truncates by default (SEMSEARCH_*_AUTO_TRUNCATE), by service (embedder, reranker).",
    ["service"],
)

# -- resilience (app.resilience, the gateway) ------------------------------------------------
CIRCUIT_STATE = Gauge(
    "semsearch_circuit_state",
    "Circuit breaker state by dependency: 0 closed, 1 open, 2 half-open.",
    ["name"],
)
CIRCUIT_OPEN = Gauge(
    "semsearch_circuit_open",
    "1 while the dependency's circuit breaker is open.",
    ["name"],
)
CIRCUIT_TRANSITIONS = Counter(
    "semsearch_circuit_transitions_total",
    "Circuit breaker state changes, by dependency and new state.",
    ["name", "to"],
)
CIRCUIT_CALLS = Counter(
    "semsearch_circuit_calls_total",
    "Calls through a circuit breaker, by dependency and outcome: ok, busy (429), rejected "
    "(4xx), deadline (ours ran out: no verdict), slow (timed out but alive), hang, error "
    "(the last two count toward opening), refused (the breaker was open).",
    ["name", "outcome"],
)
RETRIES = Counter(
    "semsearch_retries_total",
    "Retried calls to a dependency (idempotent calls only, inside the deadline).",
    ["name"],
)
BULKHEAD_REJECTIONS = Counter(
    "semsearch_bulkhead_rejections_total",
    "Calls refused because the dependency's concurrency limit stayed full.",
    ["name"],
)
SHED_REQUESTS = Counter(
    "semsearch_shed_requests_total",
    "Requests refused with 429 before any work, by reason: limit (the gateway's adaptive "
    "admission limit), rate_limit (an API key over its rate), queue_wait (a model service "
    "expects to answer after the caller's deadline), queue_full (a model queue's item bound).",
    ["reason"],
)
ADMISSION_LIMIT = Gauge(
    "semsearch_admission_limit",
    "The gateway's adaptive limit on searches in progress.",
)
ADMISSION_INFLIGHT = Gauge(
    "semsearch_admission_inflight",
    "Searches in progress in the gateway.",
)
ADMISSION_ADJUSTMENTS = Counter(
    "semsearch_admission_adjustments_total",
    "Changes of the admission limit, by direction (up, down) and cause: fast (a search "
    "answered within its target), slow (it took longer), shed (a dependency refused it or its "
    "deadline passed).",
    ["direction", "cause"],
)
RERANK_SKIPPED = Counter(
    "semsearch_rerank_skipped_total",
    "Searches answered without reranking, by reason: budget (too little of the reranking "
    "budget left), busy (the reranker refused: its queue would finish too late), "
    "circuit_open, timeout, error, not_finite.",
    ["reason"],
)
AUTH_FAILURES = Counter(
    "semsearch_auth_failures_total",
    "Requests refused with 401 (missing or unknown API key).",
)

# -- writes over HTTP (app.ingest.writer) ---------------------------------------------------------
WRITES = Counter(
    "semsearch_writes_total",
    "Writes over HTTP by kind (upsert, delete) and event: acknowledged (journaled), applied "
    "(staged), searchable (published), failed, postponed (a cycle to be tried again).",
    ["kind", "event"],
)
WRITE_JOURNAL_BYTES = Gauge(
    "semsearch_write_journal_pending_bytes",
    "Bytes of acknowledged writes not yet searchable; at the limit, writes are refused (429).",
)
