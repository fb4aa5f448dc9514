"""Resilience primitives: circuit breaker, deadline, retry with jittered backoff, bulkhead.

Small and dependency-free on purpose: the clock is injected (tests step time instead of
sleeping), everything is asyncio-native, and the breaker's state is a Prometheus gauge.
`StageGuard` composes them for one stage of the search path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from app import metrics
from app.config import GatewaySettings
from app.errors import (
    BudgetExhausted,
    CircuitOpen,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from app.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")
Clock = Callable[[], float]

# Errors that say "your request is wrong" or "busy right now", not "this component is broken".
NOT_A_FAULT: tuple[type[BaseException], ...] = (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Overloaded,
)


_NOT_RETRIED: tuple[type[BaseException], ...] = (DeadlineExceeded, CircuitOpen, *NOT_A_FAULT)


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int  # consecutive failures that open the circuit
    window_s: float  # ... or this error rate over this window
    error_rate: float
    min_calls: int  # calls in the window before the rate counts
    recovery_s: float  # open this long, then let probes through
    half_open_probes: int = 1  # concurrent trial calls while half-open

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> BreakerPolicy:
        return cls(
            failure_threshold=settings.breaker_failure_threshold,
            window_s=settings.breaker_window_s,
            error_rate=settings.breaker_error_rate,
            min_calls=settings.breaker_min_calls,
            recovery_s=settings.breaker_recovery_s,
        )


@dataclass(frozen=True)
class Permit:
    """What `CircuitBreaker.allow` handed out: under which state (its epoch) and whether as a
    half-open probe. A verdict only counts for the state that admitted the call: a call let
    through while closed that ends after the breaker tripped says nothing about the probe."""

    epoch: int
    probe: bool


class CircuitBreaker:
    """Closed -> (failures) -> open -> (recovery_s) -> half-open -> (probe ok) -> closed."""

    def __init__(self, name: str, policy: BreakerPolicy, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped on every state change
        self._opened_at = 0.0
        self._consecutive = 0
        self._events: deque[tuple[float, bool]] = deque()
        self._probes = 0
        self._publish()

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.recovery_s
        ):
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> Permit:
        """Claim permission for one call; hand the permit back with `record` or `release`.

        Raises:
            CircuitOpen: open, or half-open with its probes already out.
        """
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(self._epoch, probe=False)
        if state is BreakerState.HALF_OPEN and self._probes < self.policy.half_open_probes:
            self._probes += 1
            return Permit(self._epoch, probe=True)
        wait = max(0.0, self.policy.recovery_s - (self._clock() - self._opened_at))
        raise CircuitOpen(f"{self.name} circuit is open", retry_after_s=max(1.0, wait))

    def record(self, permit: Permit, ok: bool) -> None:
        """The outcome of a call that `allow` let through."""
        if permit.epoch != self._epoch:
            return  # admitted under an earlier state: stale news
        now = self._clock()
        if permit.probe:
            self._probes = max(0, self._probes - 1)
            if ok:
                self._reset()
                self._move(BreakerState.CLOSED)
            else:
                self._trip(now)
            return
        self._events.append((now, ok))
        while self._events and self._events[0][0] < now - self.policy.window_s:
            self._events.popleft()
        self._consecutive = 0 if ok else self._consecutive + 1
        failures = sum(1 for _, good in self._events if not good)
        rate_tripped = (
            len(self._events) >= self.policy.min_calls
            and failures / len(self._events) >= self.policy.error_rate
        )
        if self._consecutive >= self.policy.failure_threshold or rate_tripped:
            self._trip(now)

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        permit = self.allow()
        try:
            result = await work()
        except NOT_A_FAULT:
            self.record(permit, True)  # the component answered; the request was the problem
            raise
        except (BudgetExhausted, asyncio.CancelledError):
            self.release(permit)  # cut short by the caller: says nothing about the dependency
            raise
        except BaseException:
            self.record(permit, False)
            raise
        self.record(permit, True)
        return result

    def release(self, permit: Permit) -> None:
        """A call `allow` let through ended without a verdict; free its probe slot."""
        if permit.probe and permit.epoch == self._epoch:
            self._probes = max(0, self._probes - 1)

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._reset()
        self._move(BreakerState.OPEN)

    def _reset(self) -> None:
        self._consecutive = 0
        self._events.clear()
        self._probes = 0

    def _move(self, state: BreakerState) -> None:
        if state is not self._state:
            self._epoch += 1
            log.warning("circuit_state", circuit=self.name, state=state.name.lower())
            metrics.CIRCUIT_TRANSITIONS.labels(self.name, state.name.lower()).inc()
        self._state = state
        self._publish()

    def _publish(self) -> None:
        metrics.CIRCUIT_STATE.labels(self.name).set(int(self._state))
        metrics.CIRCUIT_OPEN.labels(self.name).set(1 if self._state is BreakerState.OPEN else 0)


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
        self.expires_at = (clock() if started_at is None else started_at) + budget_s

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self._clock())

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
        """Run `work` in a slot, waiting at most `wait_s` for one.

        Raises:
            Overloaded: no slot freed up in time.
        """
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=max(wait_s, 0.0))
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
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        """`work()` under the guard, inside `deadline`.

        Raises:
            DeadlineExceeded: the budget ran out (each try is cut to what remains).
            CircuitOpen: the breaker refused the call.
            Overloaded: the bulkhead had no slot within the budget.
            whatever `work` raised on its last try.
        """
        attempt = 0
        while True:
            if deadline.remaining() <= 0:
                raise DeadlineExceeded(f"no time left for {self.name}")
            try:
                return await self.bulkhead.run(
                    lambda: self.breaker.call(lambda: self._timed(work, deadline)),
                    wait_s=deadline.remaining(),
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

    async def _timed(self, work: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
        budget = deadline.cap(self.timeout_s)
        try:
            return await asyncio.wait_for(work(), timeout=budget)
        except TimeoutError:
            if budget < self.timeout_s:  # the request's deadline, not the stage cap, ran out
                raise BudgetExhausted(
                    f"{self.name} did not answer within the request's deadline"
                ) from None
            # one slow try, with budget left: a fault of the dependency, worth a retry
            raise Unavailable(f"{self.name} timed out after {budget:.2f}s") from None
