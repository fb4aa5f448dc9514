"""Resilience primitives: deadline, retry with jittered backoff, bulkhead, and `StageGuard`,
which composes them with a circuit breaker (app/breaker.py) for one stage of the search path.

Small and dependency-free on purpose: the clock is injected (tests step time instead of
sleeping) and everything is asyncio-native. A call that times out is judged here: slow when
the dependency answered other calls meanwhile, a hang when it also fails its probe.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

from app import metrics
from app.breaker import NOT_A_FAULT, CircuitBreaker, Permit, Probe, Verdict, verdict_of
from app.config import GatewaySettings
from app.errors import (
    BudgetExhausted,
    CircuitOpen,
    DeadlineExceeded,
    Overloaded,
    SemsearchError,
    Unavailable,
)
from app.types import Clock

T = TypeVar("T")

# The caller's remaining budget travels with each call to a model service, in milliseconds from
# when the request is sent (relative, as gRPC's grpc-timeout, so no clocks need agree).
TIMEOUT_HEADER = "x-request-timeout-ms"
# When the caller of the current call stops waiting (time.monotonic): set by the StageGuard
# around a call, and in the model services from TIMEOUT_HEADER. The HTTP clients send it on;
# the batch queues refuse work that would finish after it.
call_deadline: ContextVar[float | None] = ContextVar("call_deadline", default=None)

_NOT_RETRIED: tuple[type[BaseException], ...] = (DeadlineExceeded, CircuitOpen, *NOT_A_FAULT)


# When the current request arrived (time.monotonic), set by the services' middleware: the
# deadline counts from arrival, so time spent queued before the search started is spent too.
request_arrival: ContextVar[float | None] = ContextVar("request_arrival", default=None)


class Deadline:
    """One request's time budget; every stage spends from it."""

    def __init__(
        self, budget_s: float, clock: Clock = time.monotonic, started_at: float | None = None
    ) -> None:
        self._clock = clock
        self.budget_s = budget_s
        self.started_at = clock() if started_at is None else started_at
        self.expires_at = self.started_at + budget_s

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock())

    def portion(self, fraction: float) -> Deadline:
        """The deadline by which `fraction` of this budget is spent (0 < fraction <= 1)."""
        return Deadline(self.budget_s * fraction, self._clock, self.started_at)

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left of the budget if that is less."""
        return min(seconds, self.remaining())


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # total tries, the first included
    base_delay_s: float  # backoff base, jittered and doubled per retry
    max_delay_s: float = 0.5

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RetryPolicy:
        return cls(settings.retry_attempts, settings.retry_base_delay_ms / 1000)


def backoff(policy: RetryPolicy, attempt: int, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt))."""
    return rng() * min(policy.max_delay_s, policy.base_delay_s * 2.0**attempt)


class Bulkhead:
    """A concurrency limit for one dependency, so a slow one cannot take every slot."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)

    async def run(self, work: Callable[[], Awaitable[T]], wait_s: float) -> T:
        """Run `work` in a slot, waiting at most `wait_s` for one (0: only a free one).

        Raises:
            Overloaded: no slot freed up in time.
        """
        try:
            if wait_s > 0:
                await asyncio.wait_for(self._semaphore.acquire(), timeout=wait_s)
            elif self._semaphore.locked():
                raise TimeoutError
            else:
                await self._semaphore.acquire()  # free: returns at once
        except TimeoutError:
            metrics.BULKHEAD_REJECTIONS.labels(self.name).inc()
            raise Overloaded(f"too many concurrent {self.name} calls", retry_after_s=1.0) from None
        try:
            return await work()
        finally:
            self._semaphore.release()


@dataclass
class StageGuard:
    """Bulkhead, circuit breaker, per-try timeout and retries for one dependency."""

    name: str
    breaker: CircuitBreaker
    bulkhead: Bulkhead
    timeout_s: float
    retry: RetryPolicy
    # Optional work skips at once when every slot is taken; needed work waits within its budget.
    wait_for_slot: bool = True
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Clock = time.monotonic
    # When the dependency last answered a call (any verdict that proves it alive).
    _answered_at: float = field(default=-math.inf, init=False)
    _judging: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    async def run(self, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        """`work()` under the guard, inside `deadline`.

        Raises:
            DeadlineExceeded: the budget ran out (each try is cut to what remains).
            CircuitOpen: the breaker refused the call.
            Overloaded: the bulkhead had no slot within the budget, the dependency answered
                429, or it was too busy to answer within the stage cap.
            whatever `work` raised on its last try.
        """
        attempt = 0
        while True:
            if deadline.remaining() <= 0:
                raise DeadlineExceeded(f"no time left for {self.name}")
            try:
                return await self.bulkhead.run(
                    lambda: self._try(work, deadline),
                    wait_s=deadline.remaining() if self.wait_for_slot else 0.0,
                )
            except _NOT_RETRIED:
                raise
            except Exception:
                attempt += 1
                delay = backoff(self.retry, attempt)
                if attempt >= self.retry.attempts or deadline.remaining() <= delay:
                    raise
                metrics.RETRIES.labels(self.name).inc()
                await self.sleep(delay)

    async def _try(self, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        permit = self.breaker.allow()
        budget = deadline.cap(self.timeout_s)
        started = self.clock()
        token = call_deadline.set(started + budget)  # the dependency is told (TIMEOUT_HEADER)
        try:
            result = await asyncio.wait_for(work(), timeout=budget)
        except TimeoutError:
            raise self._timed_out(permit, started, budget) from None
        except BaseException as exc:
            verdict = verdict_of(exc)
            # A deadline error raised by `work` is the dependency's own answer (its 504).
            if verdict.answered or isinstance(exc, DeadlineExceeded):
                self._answered_at = self.clock()
            self.breaker.settle(permit, verdict)
            raise
        finally:
            call_deadline.reset(token)
        self._answered_at = self.clock()
        self.breaker.settle(permit, Verdict.OK)
        return result

    def _timed_out(self, permit: Permit, started: float, budget: float) -> SemsearchError:
        """Tell a slow dependency from a hung one; the error for the caller."""
        capped = budget >= self.timeout_s  # else the request's own deadline ran out first
        if self._answered_at >= started:
            self.breaker.settle(permit, Verdict.SLOW)
        elif self.breaker.probe is not None:
            task = asyncio.create_task(self._judge(permit, self.breaker.probe))
            self._judging.add(task)
            task.add_done_callback(self._judging.discard)
        else:  # nothing to ask: a whole stage cap without an answer is taken for a hang
            self.breaker.settle(permit, Verdict.HANG if capped else Verdict.DEADLINE)
        if not capped:
            return BudgetExhausted(f"{self.name} did not answer within the request's deadline")
        if self._answered_at >= started:  # it works, but is behind: try again later
            return Overloaded(f"{self.name} is busy: no answer within {budget:.2f}s")
        return Unavailable(f"{self.name} timed out after {budget:.2f}s")

    async def _judge(self, permit: Permit, probe: Probe) -> None:
        """The verdict of a timed-out call: slow if the dependency answers its probe."""
        try:
            alive = await probe()
        except Exception:
            alive = False
        self.breaker.settle(permit, Verdict.SLOW if alive else Verdict.HANG)
