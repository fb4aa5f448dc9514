"""BatchCost: a batch's time as fixed + per-token parts, learned from the batches run."""

from __future__ import annotations

import pytest

from app.models.cost import BatchCost


def test_nothing_known_costs_nothing() -> None:
    cost = BatchCost()
    assert not cost.known
    assert cost.seconds(1000) == 0.0


def test_batches_of_one_size_are_priced_in_proportion() -> None:
    cost = BatchCost()
    for _ in range(10):
        cost.observe(10, 0.015)
    assert cost.seconds(10) == pytest.approx(0.015)
    assert cost.fixed_s == 0.0
    assert cost.seconds(20) == pytest.approx(0.030)


def test_mixed_sizes_split_the_fixed_part_from_the_per_token_part() -> None:
    """The measured shape on a CPU: lone queries are mostly fixed cost, passages mostly tokens.
    A per-token rate learned from the queries would price 1,000 tokens at 1.5 s."""
    cost = BatchCost()
    for _ in range(5):
        for tokens in (9, 12, 1000, 800):
            cost.observe(tokens, 0.012 + 0.00025 * tokens)
    assert cost.fixed_s == pytest.approx(0.012, rel=0.01)
    assert cost.per_token_s == pytest.approx(0.00025, rel=0.01)
    assert cost.seconds(1000) == pytest.approx(0.262, rel=0.01)
    assert cost.seconds(20, batches=2) == pytest.approx(0.029, rel=0.01)


def test_recent_batches_weigh_more() -> None:
    cost = BatchCost()
    for _ in range(50):
        cost.observe(100, 1.0)  # a slow spell (the CPU was shared)
    for _ in range(200):
        cost.observe(100, 0.1)
    assert cost.seconds(100) < 0.12  # the slow spell has all but faded


def test_noise_that_bends_the_line_falls_back_to_proportional() -> None:
    cost = BatchCost()
    cost.observe(10, 0.05)
    cost.observe(100, 0.02)  # larger and faster: no sensible line
    assert cost.fixed_s == 0.0
    assert cost.per_token_s > 0


@pytest.mark.parametrize(("tokens", "seconds"), [(0, 1.0), (10, -1.0), (10, float("nan"))])
def test_meaningless_observations_are_ignored(tokens: int, seconds: float) -> None:
    cost = BatchCost()
    cost.observe(tokens, seconds)
    assert not cost.known
