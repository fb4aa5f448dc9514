"""The gateway's settings (`SEMSEARCH_*`), also read by `semsearch index`, which writes the
index the gateway reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from app.config.common import ServiceSettings


class GatewaySettings(ServiceSettings):
    """The gateway, and `semsearch index`, which writes the index the gateway reads."""

    host: str = Field("127.0.0.1", description="Bind address of the gateway.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the gateway.")
    index_dir: Path = Field(Path("var/index"), description="Where collections live on disk.")
    default_collection: str = Field(
        "default", description="Collection searched when none is named."
    )
    embedder_url: str | None = Field(
        None, description="Embedder service URL; unset runs the embedder in-process."
    )
    reranker_url: str | None = Field(
        None, description="Reranker service URL; unset runs the reranker in-process."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the result cache; unset uses an in-process LRU."
    )
    cache_ttl_s: int = Field(3600, ge=1, description="Seconds a cached search answer lives.")
    cache_max_entries: int = Field(10_000, ge=1, description="Size of the in-process LRU cache.")
    cache_timeout_s: float = Field(
        0.05, gt=0, description="A cache call slower than this counts as a miss."
    )
    default_top_k: int = Field(10, ge=1, description="Results returned when `top_k` is not given.")
    max_top_k: int = Field(100, ge=1, description="Largest `top_k` accepted.")
    default_candidates: int = Field(100, ge=1, description="ANN candidates when not given.")
    max_candidates: int = Field(1000, ge=1, description="Largest `candidates` accepted.")
    rerank_depth: int = Field(
        30,
        ge=1,
        description="How many of the best ANN candidates the cross-encoder scores. It is the "
        "cost of a search on CPU (~25-50 pairs/s on 2 cores); on a GPU 100+ is cheap.",
    )
    rerank_weight: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Final score = w x z(rerank) + (1 - w) x z(first stage), z-scored per "
        "query over the reranked candidates. 1: the cross-encoder alone; 0: first-stage order. "
        "0.3 was best over hybrid candidates at depth 30 on SciFact train (see "
        "bench/README.md); `semsearch eval` sweeps it on your data.",
    )
    lexical_index: bool = Field(
        True,
        description="Give new generations (FAISS) and new collections (Qdrant) a lexical "
        "(BM25) index, published with the vectors. Off: dense only, less disk, a faster "
        "publish and no fusion calibration (its few hundred pseudo-queries are not embedded).",
    )
    search_mode: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid",
        description="First stage when a request does not say: `hybrid` (BM25 and the dense "
        "model, fused), `dense` or `lexical`. A collection without a lexical index is dense.",
    )
    fusion_method: Literal["blend", "rrf"] = Field(
        "blend",
        description="How hybrid fuses its lists: `blend` (weighted z-scores) or `rrf` "
        "(weighted reciprocal rank fusion, k 60).",
    )
    fusion_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The lexical list's share. Unset: a blend uses the weight calibrated for "
        "each collection when it was published (0.3 if it could not be), rrf uses 0.5.",
    )
    group_by: Literal["document", "chunk"] = Field(
        "document",
        description="What a result is when a request does not say: a source `document` (its "
        "matching chunks gathered under it; `top_k` counts documents) or one `chunk`.",
    )
    snippet_chars: int = Field(
        240, ge=20, le=10_000, description="Length of a result's snippet, in characters."
    )
    max_query_chars: int = Field(2048, ge=1, description="Longest query accepted (422 above).")
    model_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of one call to a remote embedder/reranker service."
    )
    index_batch_size: int = Field(
        256, ge=1, description="Documents read, embedded and committed per batch when indexing."
    )
    index_reload_interval_s: float = Field(
        2.0, gt=0, description="How often the gateway looks for a newly published index generation."
    )

    fallback_index_dir: Path | None = Field(
        None,
        description="A second FAISS copy of every collection, searched when the primary index "
        'fails (answers flagged `degraded: ["index"]`). `semsearch index` writes both.',
    )
    index_backend: Literal["faiss", "qdrant"] = Field(
        "faiss", description="The primary index: FAISS on disk, or Qdrant (the `qdrant` extra)."
    )
    qdrant_url: str | None = Field(
        None, description="Qdrant server URL; unset with the qdrant backend: embedded local mode."
    )
    qdrant_path: Path | None = Field(
        None, description="Folder of embedded local-mode Qdrant (default: <index_dir>/qdrant)."
    )
    qdrant_api_key: str | None = Field(None, description="Qdrant API key (server mode).")
    qdrant_shards: int = Field(1, ge=1, description="Shards of a new Qdrant collection.")
    qdrant_replication_factor: int = Field(
        1, ge=1, description="Replicas of each shard of a new Qdrant collection."
    )
    qdrant_exact: bool = Field(
        False, description="Exact (brute-force) Qdrant search instead of HNSW; for checks."
    )
    # -- FAISS index types ----------------------------------------------------------------------
    index_type: Literal["auto", "flat", "hnsw", "ivfpq"] = Field(
        "auto",
        description="FAISS index built at publish. `auto`: flat (exact) below 50k vectors, HNSW "
        "below 2M, IVF-PQ above.",
    )
    hnsw_m: int = Field(32, ge=4, le=128, description="HNSW links per node (build).")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW candidate list at build.")
    hnsw_ef_search: int = Field(128, ge=8, description="HNSW candidate list at search.")
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 picks 4 x sqrt(vectors).")
    ivf_nprobe: int = Field(32, ge=1, description="IVF lists visited per search.")
    pq_m: int = Field(0, ge=0, description="PQ bytes per vector; 0 picks dimension / 8.")
    ivf_refine: int = Field(
        30, ge=1, description="IVF-PQ: candidates per result re-scored exactly from raw vectors."
    )
    faiss_gpu: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Move flat/IVF indexes to the GPU when faiss-gpu sees one (`gpu` extra).",
    )
    # -- the deadline budget -----------------------------------------------------------------
    search_timeout_ms: int = Field(
        5000, ge=1, description="Deadline of one search; every stage spends from it."
    )
    min_timeout_ms: int = Field(
        100, ge=1, description="Smallest per-request `timeout_ms` accepted (422 below)."
    )
    max_timeout_ms: int = Field(
        60_000, ge=1, description="Largest per-request `timeout_ms` accepted (422 above)."
    )
    min_rerank_budget_ms: int = Field(
        100, ge=0, description="Reranking is skipped (degraded) when less than this remains."
    )
    embed_timeout_ms: int = Field(2000, ge=1, description="Cap of one query-embedding try.")
    index_timeout_ms: int = Field(2000, ge=1, description="Cap of one ANN search try.")
    primary_index_timeout_ms: int = Field(
        500,
        ge=1,
        description="With a fallback copy: the primary gets this long before the fallback "
        "answers (keep it under index_timeout_ms, so the fallback has time).",
    )
    rerank_timeout_ms: int = Field(4000, ge=1, description="Cap of one rerank try.")
    rerank_budget_fraction: float = Field(
        0.4,
        gt=0,
        le=1,
        description="While other searches are in progress, reranking must end within this "
        "fraction of a search's deadline (from its arrival); the reranker service is told so "
        "and refuses at once when its queue would make it later. Answers are then in "
        "first-stage order, so searches under load end well inside their deadline. A search "
        "alone may rerank until its deadline.",
    )
    # -- failure handling ----------------------------------------------------------------------
    retry_attempts: int = Field(
        2, ge=1, le=5, description="Tries per idempotent call, the first included."
    )
    retry_base_delay_ms: int = Field(
        50, ge=0, description="Backoff base; jittered, doubled per retry, within the deadline."
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open a circuit breaker."
    )
    breaker_error_rate: float = Field(
        0.5, gt=0, le=1, description="...or this error rate over `breaker_window_s`."
    )
    breaker_window_s: float = Field(30.0, gt=0, description="Error-rate window of the breakers.")
    breaker_min_calls: int = Field(
        20, ge=1, description="Calls in the window before the error rate counts."
    )
    breaker_recovery_s: float = Field(
        10.0,
        gt=0,
        description="How long an open breaker refuses before one trial call is let through.",
    )
    breaker_probe_interval_s: float = Field(
        1.0,
        gt=0,
        description="An open breaker of a model service asks it `GET /info` in the background "
        "(first after a tenth of this, doubling up to this) and closes as soon as it answers.",
    )
    max_inflight_searches: int = Field(
        64,
        ge=1,
        description="Ceiling of the adaptive admission limit (searches in progress per "
        "process); searches over the limit are refused with 429.",
    )
    min_inflight_searches: int = Field(
        2, ge=1, description="Floor of the adaptive admission limit."
    )
    admission_target_fraction: float = Field(
        0.2,
        gt=0,
        le=1,
        description="The admission limit shrinks (x0.9, once per round trip) while searches "
        "take longer than this fraction of their deadline to answer, reranking not counted, or "
        "are shed downstream; it grows while they are faster and the limit is in use.",
    )
    embedder_concurrency: int = Field(
        32, ge=1, description="Concurrent calls to the embedder (a bulkhead)."
    )
    reranker_concurrency: int = Field(
        8, ge=1, description="Concurrent calls to the reranker, so it cannot starve embedding."
    )
    # -- writes over HTTP (app.ingest.journal, app.ingest.writer) -----------------------------
    refresh_interval_s: float = Field(
        1.0,
        gt=0,
        description="Acknowledged writes become searchable at the next publish, at most this "
        "long after they are applied (or at once with `?wait=true`), as Elasticsearch's refresh "
        "interval.",
    )
    write_journal_dir: Path | None = Field(
        None,
        description="Where acknowledged writes are journaled (fsynced) until they are "
        "searchable. Default: <index_dir>/.journal. One gateway process per folder.",
    )
    write_journal_max_bytes: int = Field(
        256 * 2**20,
        ge=1,
        description="Bytes of writes acknowledged but not yet searchable; more is refused with "
        "429 and Retry-After.",
    )
    max_documents_per_request: int = Field(
        1000, ge=1, description="Most documents (or ids) in one write request (413 above)."
    )
    max_document_chars: int = Field(
        1_000_000, ge=1, description="Longest document text accepted over HTTP (413 above)."
    )
    write_timeout_ms: int = Field(
        30_000,
        ge=1,
        description="How long a write with `?wait=true` waits for its publish before it is "
        "answered 202 (acknowledged, still pending).",
    )
    write_status_ttl_s: float = Field(
        86_400.0,
        gt=0,
        description="How long the status of a finished write (searchable or failed) stays "
        "queryable at /v1/collections/{name}/writes/{id}.",
    )
    write_drain_s: float = Field(
        20.0,
        ge=0,
        description="On shutdown, how long the gateway keeps applying and publishing the writes "
        "it acknowledged before it exits (what is left is applied at its next start).",
    )
    fallback_sync_interval_s: float = Field(
        30.0,
        gt=0,
        description="With a Qdrant primary and a FAISS fallback copy: how often a gateway "
        "brings its copy up to what Qdrant published (writes other replicas applied), when "
        "Qdrant published since. Each time reads every id of the collection.",
    )
    writer_lease_ttl_s: float = Field(
        30.0,
        gt=0,
        description="With Qdrant and Redis: the lease a gateway holds on a collection while it "
        "applies writes (renewed while held), so replicas take turns writing it.",
    )
    # -- API keys ------------------------------------------------------------------------------
    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses placeholder API keys at start-up."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated keys, or `sha256:<hex>` digests of keys (better), each "
        "with the `write` scope (read and write) on every collection. Any key set turns auth "
        "on for /v1/*.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of keys or `sha256:<hex>` digests, one per line (`#` comments), "
        "each optionally followed by its scope (`read`, `write`, `admin`) and the collections "
        "it may use (comma-separated, `*` for all). See the README.",
    )
    rate_limit_per_s: float = Field(
        20.0, gt=0, description="Searches per second per API key (token bucket refill)."
    )
    rate_limit_burst: int = Field(40, ge=1, description="Token bucket size per API key.")

    @field_validator(
        "embedder_url",
        "reranker_url",
        "redis_url",
        "fallback_index_dir",
        "api_keys_file",
        "write_journal_dir",
        "qdrant_url",
        "qdrant_path",
        "qdrant_api_key",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # compose files often write `SEMSEARCH_REDIS_URL=` to mean "none"
        return None if value == "" else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):  # keys are tokens; they hold no commas
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GatewaySettings:
        if self.search_timeout_ms > self.max_timeout_ms:
            raise ValueError("search_timeout_ms must not exceed max_timeout_ms")
        if self.min_inflight_searches > self.max_inflight_searches:
            raise ValueError("min_inflight_searches must not exceed max_inflight_searches")
        return self

    @property
    def journal_dir(self) -> Path:
        """Where the write journal lives: `write_journal_dir`, else a hidden folder of the index
        dir (a collection name cannot start with a dot, so it is never taken for one)."""
        return self.write_journal_dir or self.index_dir / ".journal"
