"""AdaptiveLimit: refuse over the limit, cut on slow or shed searches once per round trip, grow
slowly while fast and in use, stay within floor and ceiling (stepped clock)."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import REGISTRY

from app.admission import AdaptiveLimit, LimitPolicy, Ticket
from app.errors import Overloaded

BUDGET_S = 2.0  # every search here has a 2 s deadline; its target is 10% of it: 200 ms
FAST, SLOW = 0.05, 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, low: int = 2, high: int = 10) -> AdaptiveLimit:
    return AdaptiveLimit(LimitPolicy(min_limit=low, max_limit=high, target_fraction=0.1), clock)


def fill(limit: AdaptiveLimit) -> list[Ticket]:
    return [limit.admit(BUDGET_S) for _ in range(limit.limit)]


def test_it_starts_at_the_ceiling_and_refuses_over_the_limit_at_once() -> None:
    limit = limiter(Clock())
    tickets = fill(limit)
    assert len(tickets) == 10 and limit.inflight == 10
    with pytest.raises(Overloaded) as refused:
        limit.admit(BUDGET_S)
    assert refused.value.retry_after_s >= 1
    assert REGISTRY.get_sample_value("semsearch_admission_inflight") == 10
    limit.done(tickets[0], FAST)
    assert limit.admit(BUDGET_S).inflight == 10  # the freed place is taken again


def test_slow_searches_cut_the_limit_once_per_round_trip() -> None:
    clock = Clock()
    limit = limiter(clock)
    tickets = fill(limit)
    clock.now += 1
    for ticket in tickets:  # ten slow answers, all admitted before the first cut
        limit.done(ticket, SLOW)
    assert limit.limit == 9  # 10 x 0.9, once
    after = limit.admit(BUDGET_S)  # admitted under the new limit: its news counts
    clock.now += 1
    limit.done(after, SLOW)
    assert limit.limit == 8  # 9 x 0.9 = 8.1


def test_searches_shed_downstream_cut_the_limit_and_cancelled_ones_teach_nothing() -> None:
    clock = Clock()
    limit = limiter(clock)
    cancelled = limit.admit(BUDGET_S)
    limit.done(cancelled, None)  # the client went away
    assert limit.limit == 10
    shed = limit.admit(BUDGET_S)
    clock.now += 0.01
    limit.done(shed, None, shed=True)  # e.g. the embedder answered 429
    assert limit.limit == 9


def test_the_target_is_a_fraction_of_each_searchs_own_deadline() -> None:
    clock = Clock()
    limit = limiter(clock)
    patient = limit.admit(10.0)  # 10 s deadline: 1 s target
    limit.done(patient, 0.5)
    assert limit.limit == 10
    hurried = limit.admit(1.0)  # 1 s deadline: 100 ms target
    limit.done(hurried, 0.15)
    assert limit.limit == 9


def test_fast_searches_raise_a_limit_in_use_by_at_most_one_per_round_trip() -> None:
    clock = Clock()
    limit = limiter(clock, low=2, high=10)
    while limit.limit > 4:  # cut it down first
        ticket = limit.admit(BUDGET_S)
        clock.now += 1
        limit.done(ticket, SLOW)
    before = limit._limit
    quiet = limit.admit(BUDGET_S)  # one search in progress: the limit is not in use
    limit.done(quiet, FAST)
    assert limit._limit == before
    grown = [before]
    for _ in range(4):  # round trips at the limit, every answer within its target
        for ticket in fill(limit):
            limit.done(ticket, 0.15)
        grown.append(limit._limit)
    steps = [b - a for a, b in itertools.pairwise(grown)]
    assert all(0 < step <= 1 for step in steps)
    assert limit.limit >= 5
    for ticket in fill(limit):  # far under the target (< 100 ms): recover faster
        limit.done(ticket, FAST)
    assert limit._limit - grown[-1] > 1


def test_the_limit_stays_between_its_floor_and_its_ceiling() -> None:
    clock = Clock()
    limit = limiter(clock, low=3, high=5)
    for _ in range(30):
        ticket = limit.admit(BUDGET_S)
        clock.now += 1
        limit.done(ticket, SLOW)
    assert limit.limit == 3
    for _ in range(100):
        for ticket in fill(limit):
            limit.done(ticket, FAST)
    assert limit.limit == 5
    assert REGISTRY.get_sample_value("semsearch_admission_limit") == 5
