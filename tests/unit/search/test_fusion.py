"""Fusing the dense and the lexical list: both methods, their weights, and what each hit keeps."""

from __future__ import annotations

import pytest

from app.search.fusion import RRF_WEIGHT, UNCALIBRATED_WEIGHT, choose, fuse, single
from app.search.ranking import zscores
from app.types import Calibration, Fusion, FusionMethod, Hit

DENSE = [Hit("a", 0.9, "A"), Hit("b", 0.8, "B"), Hit("c", 0.1, "C")]
LEXICAL = [Hit("c", 12.0, "C"), Hit("d", 7.0, "D"), Hit("a", 1.0, "A")]


def ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


def test_blend_weights_the_two_lists_z_scores() -> None:
    assert ids(fuse(DENSE, LEXICAL, Fusion(FusionMethod.BLEND, 0.0)))[:3] == ["a", "b", "c"]
    assert ids(fuse(DENSE, LEXICAL, Fusion(FusionMethod.BLEND, 1.0)))[:3] == ["c", "d", "a"]
    fused = fuse(DENSE, LEXICAL, Fusion(FusionMethod.BLEND, 0.5))
    dz = dict(zip("abc", zscores([0.9, 0.8, 0.1]), strict=True))
    lz = dict(zip("cda", zscores([12.0, 7.0, 1.0]), strict=True))
    expected = {  # a passage one list missed: one below that list's lowest z-score
        i: 0.5 * dz.get(i, min(dz.values()) - 1) + 0.5 * lz.get(i, min(lz.values()) - 1)
        for i in "abcd"
    }
    assert {h.id: h.score for h in fused} == pytest.approx(expected)
    assert ids(fused) == sorted(expected, key=lambda i: -expected[i])


def test_rrf_weighted_and_classic() -> None:
    fused = fuse(DENSE, LEXICAL, Fusion(FusionMethod.RRF, 0.5, rrf_k=60))
    scores = {h.id: h.score for h in fused}
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)  # 0.5 x 2: the classic, unweighted
    assert scores["d"] == pytest.approx(1 / 62)
    assert ids(fuse(DENSE, LEXICAL, Fusion(FusionMethod.RRF, 0.0)))[:3] == ["a", "b", "c"]


def test_each_hit_keeps_each_lists_score() -> None:
    fused = {h.id: h for h in fuse(DENSE, LEXICAL, Fusion(FusionMethod.BLEND, 0.4))}
    assert (fused["a"].dense_score, fused["a"].lexical_score) == (0.9, 1.0)
    assert fused["a"].found_by == ["dense", "lexical"]
    assert (fused["b"].dense_score, fused["b"].lexical_score) == (0.8, None)
    assert fused["d"].found_by == ["lexical"] and fused["d"].text == "D"
    assert [h.found_by for h in single(DENSE, "dense")] == [["dense"]] * 3
    assert single(LEXICAL, "lexical")[0].lexical_score == 12.0


def test_a_list_of_one_passage_still_counts() -> None:
    """A rare name or a code: BM25 finds one passage. Its z-score alone is 0, no more than a
    passage it did not find would get; one below that for the others, it counts."""
    fused = fuse(DENSE, [Hit("c", 3.0, "C")], Fusion(FusionMethod.BLEND, 0.8))
    assert ids(fused)[0] == "c"


def test_one_empty_list_leaves_the_other_in_its_order() -> None:
    assert ids(fuse(DENSE, [], Fusion(FusionMethod.BLEND, 0.5))) == ["a", "b", "c"]
    assert ids(fuse([], LEXICAL, Fusion(FusionMethod.RRF, 0.5))) == ["c", "d", "a"]
    assert fuse([], [], Fusion(FusionMethod.BLEND, 0.5)) == []


def test_the_weight_a_search_uses() -> None:
    calibrated = Calibration(0.4, 1000, 400, {})
    assert choose(FusionMethod.BLEND, None, calibrated) == Fusion(FusionMethod.BLEND, 0.4)
    assert choose(FusionMethod.BLEND, None, None).weight == UNCALIBRATED_WEIGHT
    assert choose(FusionMethod.BLEND, 0.9, calibrated).weight == 0.9  # asked for: it wins
    assert choose(FusionMethod.RRF, None, calibrated) == Fusion(FusionMethod.RRF, RRF_WEIGHT)
