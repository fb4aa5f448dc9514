"""Adaptive admission: how many searches the gateway runs at once, learned from how they go.

A fixed cap is either too high (under overload every admitted search queues behind the others
until the deadline, and nothing is refused until the cap is reached) or too low (capacity left
idle). The limit here follows what the searches measure, as Netflix's concurrency-limits
(`AIMDLimit`) and TCP's congestion control do:

- the limit starts at its ceiling: until searches say otherwise, it is the old fixed cap;
- a search that took longer than its target (a fraction of its own deadline; its optional
  reranking not counted: that has a budget of its own and is skipped first), or that a
  dependency refused (429), or whose deadline passed, cuts the limit by 10%, at most once per
  round trip: a search admitted before the last cut reports on a limit that is gone;
- a search within its target raises the limit by 1/limit (one per round trip), or by one when
  it took under half its target (the limit is far below what the machine takes: recover
  fast), and only while the limit is in use, so a quiet gateway does not grow a limit it has
  not tried. Failed searches count like answered ones: how long the gateway took is the signal.

Searches over the limit are refused at once with 429 and Retry-After. No maintained Python
implementation of these limiters was found (the PyPI packages are 0.1 releases without users),
so this is the small one, with its behaviour pinned down by tests on a stepped clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from app import metrics
from app.config import GatewaySettings
from app.errors import Overloaded
from app.types import Clock

BACKOFF = 0.9  # multiplicative decrease (concurrency-limits' AIMDLimit default)


@dataclass(frozen=True)
class LimitPolicy:
    min_limit: int
    max_limit: int
    target_fraction: float  # a search is late past this fraction of its deadline

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> LimitPolicy:
        return cls(
            min_limit=settings.min_inflight_searches,
            max_limit=settings.max_inflight_searches,
            target_fraction=settings.admission_target_fraction,
        )


@dataclass(frozen=True)
class Ticket:
    """One admitted search: when, with which deadline, and how busy the gateway was."""

    admitted_at: float
    budget_s: float
    inflight: int  # searches in progress once this one was admitted


class AdaptiveLimit:
    """An AIMD limit on concurrent searches. `admit` before the work, `done` after it."""

    def __init__(self, policy: LimitPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._limit = float(policy.max_limit)
        self._inflight = 0
        self._cut_at = -math.inf
        self._publish()

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def inflight(self) -> int:
        return self._inflight

    def admit(self, budget_s: float) -> Ticket:
        """A place for one search with `budget_s` to spend; give it back with `done`.

        Raises:
            Overloaded: the limit is reached (429, before any work).
        """
        if self._inflight >= self.limit:
            metrics.SHED_REQUESTS.labels("limit").inc()
            raise Overloaded(
                f"{self._inflight} searches in progress, the most this gateway answers in time "
                "right now",
                retry_after_s=1.0,
            )
        self._inflight += 1
        self._publish()
        return Ticket(self._clock(), budget_s, self._inflight)

    def done(self, ticket: Ticket, latency_s: float | None, shed: bool = False) -> None:
        """The search ended after `latency_s` (its optional work not counted), or was `shed`
        by a dependency or its deadline; `latency_s=None` (and not shed) teaches nothing (it
        was cancelled)."""
        self._inflight -= 1
        target = self.policy.target_fraction * ticket.budget_s
        if shed:
            self._cut(ticket, "shed")
        elif latency_s is not None:
            if latency_s > target:
                self._cut(ticket, "slow")
            elif 2 * ticket.inflight >= self._limit:  # only a limit in use is worth raising
                self._raise(1.0 if latency_s < target / 2 else 1.0 / self._limit)
        self._publish()

    def _cut(self, ticket: Ticket, cause: str) -> None:
        if ticket.admitted_at < self._cut_at:
            return  # admitted under the limit before the last cut: old news
        self._cut_at = self._clock()
        limit = max(float(self.policy.min_limit), self._limit * BACKOFF)
        if limit < self._limit:
            metrics.ADMISSION_ADJUSTMENTS.labels("down", cause).inc()
        self._limit = limit

    def _raise(self, step: float) -> None:
        limit = min(float(self.policy.max_limit), self._limit + step)
        if int(limit) > int(self._limit):
            metrics.ADMISSION_ADJUSTMENTS.labels("up", "fast").inc()
        self._limit = limit

    def _publish(self) -> None:
        metrics.ADMISSION_LIMIT.set(self.limit)
        metrics.ADMISSION_INFLIGHT.set(self._inflight)
