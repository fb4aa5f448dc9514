"""Assembly: the one place where settings become parts.

The edges (each service's lifespan, the CLI's commands) read settings from the environment
and call these; everything they build receives its parts and never reads settings itself.
The embedded default (models in-process, FAISS on disk, an in-process cache) and the compose
stack (model services over HTTP, Qdrant with a FAISS fallback, Redis) are the same code: only
which URLs are set differs.
"""

from __future__ import annotations

from app.breaker import BreakerPolicy, CircuitBreaker, Probe
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.index.collections import Collections
from app.models import Embedder, Reranker, build_embedder, build_reranker
from app.models.http import HttpEmbedder, HttpReranker
from app.search.cache import build_cache
from app.search.config import Guards, PipelineConfig
from app.search.pipeline import SearchPipeline


def embedder_for(settings: GatewaySettings, model: EmbedderSettings) -> Embedder:
    """The gateway's embedder: the service at `embedder_url`, else `model` in-process."""
    if settings.embedder_url:
        return HttpEmbedder(settings.embedder_url, settings.model_timeout_s)
    return build_embedder(model)


def reranker_for(settings: GatewaySettings, model: RerankerSettings) -> Reranker:
    """The gateway's reranker: the service at `reranker_url`, else `model` in-process."""
    if settings.reranker_url:
        return HttpReranker(settings.reranker_url, settings.model_timeout_s)
    return build_reranker(model)


def build_pipeline(
    settings: GatewaySettings, embedder: EmbedderSettings, reranker: RerankerSettings
) -> SearchPipeline:
    """The gateway's search pipeline, not started: models in-process or remote, collections
    as configured, Redis or the in-process cache, one breaker and bulkhead per dependency."""
    embedding = embedder_for(settings, embedder)
    reranking = reranker_for(settings, reranker)
    return SearchPipeline(
        embedder=embedding,
        reranker=reranking,
        collections=Collections.from_settings(settings),
        cache=build_cache(
            settings.redis_url,
            settings.cache_max_entries,
            settings.cache_timeout_s,
            CircuitBreaker("cache", BreakerPolicy.from_settings(settings)),
        ),
        config=PipelineConfig.from_settings(settings),
        guards=Guards.from_settings(settings, _probe(embedding), _probe(reranking)),
        default_collection=settings.default_collection,
    )


def _probe(model: Embedder | Reranker) -> Probe | None:
    """A model service can be asked whether it answers (`GET /info`, served by its event loop
    even while its model is busy); an in-process model has nothing to ask."""
    return model.probe if isinstance(model, HttpEmbedder | HttpReranker) else None
