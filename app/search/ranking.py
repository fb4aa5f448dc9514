"""The final order of a search: the reranker's and the first stage's scores blended per query.

Used by the pipeline and by `semsearch eval`, which re-ranks one reranked answer at other
weights and depths without running the cross-encoder again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.types import Hit, RankedHit


def fuse(ann: Sequence[float], rerank: Sequence[float], weight: float) -> list[float]:
    """Blend the two stages' scores over the reranked candidates of one query:
    `weight * z(rerank) + (1 - weight) * z(ann)`, z being the z-score within the list.
    weight 1 ranks by the cross-encoder alone; 0 keeps the ANN order."""
    if weight >= 1.0:
        return list(rerank)
    return [
        weight * r + (1.0 - weight) * a for r, a in zip(zscores(rerank), zscores(ann), strict=True)
    ]


def zscores(values: Sequence[float]) -> list[float]:
    """(v - mean) / standard deviation within `values`; all 0 when they are all equal."""
    if not values:
        return []
    mean = sum(values) / len(values)
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / spread if spread > 0 else 0.0 for v in values]


def rank_results(
    hits: list[Hit], scores: list[float] | None, top_k: int, weight: float = 1.0
) -> list[RankedHit]:
    """Reranked head ordered by the fused score (stable on ties), then the rest in ANN order;
    the first `top_k`. `score` is what the order follows: the fused score when reranked."""
    if scores is None:
        return [RankedHit(h, i + 1, h.score, None) for i, h in enumerate(hits[:top_k])]
    final = fuse([h.score for h in hits[: len(scores)]], scores, weight)
    head = sorted(range(len(scores)), key=lambda i: -final[i])
    ranked = [RankedHit(hits[i], 0, final[i], scores[i]) for i in head]
    ranked += [RankedHit(h, 0, h.score, None) for h in hits[len(scores) :]]
    return [
        RankedHit(r.hit, rank, r.score, r.rerank_score)
        for rank, r in enumerate(ranked[:top_k], start=1)
    ]
