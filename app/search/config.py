"""The search path's parts that come from settings: its limits and defaults, and the guard
(breaker, bulkhead, per-try timeout, retries) of each dependency a search calls."""

from __future__ import annotations

from dataclasses import dataclass

from app.admission import LimitPolicy
from app.breaker import BreakerPolicy, CircuitBreaker, Probe
from app.config import GatewaySettings
from app.resilience import Bulkhead, RetryPolicy, StageGuard
from app.search.query import QueryLimits
from app.types import FusionMethod, GroupBy, SearchMode


@dataclass(frozen=True)
class PipelineConfig:
    """The search path's defaults and limits (from the gateway's settings)."""

    limits: QueryLimits
    rerank_depth: int
    rerank_weight: float
    cache_ttl_s: int
    timeout_ms: int
    min_rerank_budget_ms: int
    rerank_budget_fraction: float
    admission: LimitPolicy
    mode: SearchMode
    fusion_method: FusionMethod
    fusion_weight: float | None  # None: each collection's calibrated weight
    group_by: GroupBy
    snippet_chars: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PipelineConfig:
        return cls(
            limits=QueryLimits.from_settings(settings),
            rerank_depth=settings.rerank_depth,
            rerank_weight=settings.rerank_weight,
            cache_ttl_s=settings.cache_ttl_s,
            timeout_ms=settings.search_timeout_ms,
            min_rerank_budget_ms=settings.min_rerank_budget_ms,
            rerank_budget_fraction=settings.rerank_budget_fraction,
            admission=LimitPolicy.from_settings(settings),
            mode=SearchMode(settings.search_mode),
            fusion_method=FusionMethod(settings.fusion_method),
            fusion_weight=settings.fusion_weight,
            group_by=GroupBy(settings.group_by),
            snippet_chars=settings.snippet_chars,
        )


@dataclass
class Guards:
    """Breaker, bulkhead, per-try timeout and retries for each dependency of a search."""

    embed: StageGuard
    index: StageGuard
    lexical: StageGuard
    rerank: StageGuard

    @classmethod
    def from_settings(
        cls,
        settings: GatewaySettings,
        embed_probe: Probe | None = None,
        rerank_probe: Probe | None = None,
    ) -> Guards:
        """`*_probe`: how to ask a remote model service whether it answers (see StageGuard)."""
        policy = BreakerPolicy.from_settings(settings)
        retry = RetryPolicy.from_settings(settings)
        return cls(
            embed=_guard(
                "embedder",
                policy,
                settings.embedder_concurrency,
                settings.embed_timeout_ms,
                retry,
                embed_probe,
            ),
            index=_guard(
                "index", policy, settings.max_inflight_searches, settings.index_timeout_ms, retry
            ),
            # its own breaker: a failing lexical index must not stop dense searches
            lexical=_guard(
                "lexical", policy, settings.max_inflight_searches, settings.index_timeout_ms, retry
            ),
            rerank=_guard(
                "reranker",
                policy,
                settings.reranker_concurrency,
                settings.rerank_timeout_ms,
                RetryPolicy(attempts=1, base_delay_s=0.0),
                rerank_probe,
                wait_for_slot=False,  # reranking is optional: with no slot free, skip it now
            ),
        )

    async def stop(self) -> None:
        for guard in (self.embed, self.index, self.lexical, self.rerank):
            await guard.breaker.stop()


def _guard(
    name: str,
    policy: BreakerPolicy,
    limit: int,
    timeout_ms: int,
    retry: RetryPolicy,
    probe: Probe | None = None,
    wait_for_slot: bool = True,
) -> StageGuard:
    breaker = CircuitBreaker(name, policy, probe=probe)
    bulkhead = Bulkhead(name, limit)
    return StageGuard(name, breaker, bulkhead, timeout_ms / 1000, retry, wait_for_slot)
