"""Hybrid retrieval's first stage: the dense and the lexical lists fused into one.

Two methods, each with the lexical list's weight w in [0, 1]:

- `blend`: w z(BM25) + (1 - w) z(cosine), each list z-scored over its own candidates; a passage
  one list did not find gets one less than that list's lowest z-score (it ranked below
  everything the list found; on SciFact and DBpedia this scores within 0.003 of using the
  lowest z-score itself, and a list of one passage still counts).
- `rrf`: reciprocal rank fusion, w / (k + rank) + (1 - w) / (k + rank), times 2 so that w 0.5
  is the classic unweighted RRF.

Which weight suits a collection depends on it (on SciFact BM25 beats the dense model, on
DBpedia entities it is far behind), so a blend's default weight is calibrated per collection
when it is published (`app.search.calibration`).
"""

from __future__ import annotations

from app.search.ranking import zscores
from app.types import Calibration, Fusion, FusionMethod, Hit

# A blend's lexical share for a collection that could not be calibrated (too few documents of
# several sentences: see app.search.calibration). Between what the two calibrated collections
# chose (SciFact 0.4, DBpedia 0): a compromise, not a fit.
UNCALIBRATED_WEIGHT = 0.3
RRF_WEIGHT = 0.5  # RRF without a weight is the classic, unweighted one


def choose(method: FusionMethod, weight: float | None, calibration: Calibration | None) -> Fusion:
    """The fusion a search uses: a weight given (by the request, else the settings) wins; a
    blend otherwise takes the collection's calibrated weight."""
    if weight is None:
        if method is FusionMethod.RRF:
            weight = RRF_WEIGHT
        else:
            weight = calibration.weight if calibration else UNCALIBRATED_WEIGHT
    return Fusion(method, weight)


def fuse(dense: list[Hit], lexical: list[Hit], fusion: Fusion) -> list[Hit]:
    """One list, best first: each hit carries the fused score as `score` and each list's own
    score (None where that list did not find it). Ties keep the dense order, then lexical."""
    dense_scores = {h.id: h.score for h in dense}
    lexical_scores = {h.id: h.score for h in lexical}
    first: dict[str, Hit] = {}
    for hit in (*dense, *lexical):
        first.setdefault(hit.id, hit)
    if fusion.method is FusionMethod.RRF:
        fused = _rrf(dense, lexical, fusion)
    else:
        fused = _blend(dense, lexical, fusion.weight)
    order = sorted(first, key=lambda i: -fused[i])  # stable: dense order first on ties
    return [first[i].scored(fused[i], dense_scores.get(i), lexical_scores.get(i)) for i in order]


def single(hits: list[Hit], side: str) -> list[Hit]:
    """One list as the first stage (dense-only or lexical-only): its own score is the score."""
    if side == "dense":
        return [h.scored(h.score, h.score, None) for h in hits]
    return [h.scored(h.score, None, h.score) for h in hits]


def _blend(dense: list[Hit], lexical: list[Hit], weight: float) -> dict[str, float]:
    dz = dict(zip((h.id for h in dense), zscores([h.score for h in dense]), strict=True))
    lz = dict(zip((h.id for h in lexical), zscores([h.score for h in lexical]), strict=True))
    # below everything the list found, by one of its standard deviations: a list that found
    # one passage (a rare name, a code) still lifts it; its z-score alone would be 0
    dense_floor = min(dz.values(), default=0.0) - 1.0
    lexical_floor = min(lz.values(), default=0.0) - 1.0
    return {
        i: (1 - weight) * dz.get(i, dense_floor) + weight * lz.get(i, lexical_floor)
        for i in dz.keys() | lz.keys()
    }


def _rrf(dense: list[Hit], lexical: list[Hit], fusion: Fusion) -> dict[str, float]:
    fused: dict[str, float] = {}
    for share, hits in ((1 - fusion.weight, dense), (fusion.weight, lexical)):
        for rank, hit in enumerate(hits, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 2 * share / (fusion.rrf_k + rank)
    return fused
