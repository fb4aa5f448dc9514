"""The circuit breaker: it opens on what means a dependency is broken, never on a busy one.

Each call ends in a `Verdict`: an answer of any kind (a result, 429 busy, 4xx) proves the
dependency works; a refused or dropped connection, a 5xx or a garbled answer is a fault. A call
that times out is slow, not dead, when the dependency answered other calls while it waited;
otherwise it is a hang only if the dependency also fails a liveness probe (a model service's
`GET /info`, answered by its event loop even while its model thread is busy) -- or, for a
dependency with no probe, when the try used its whole stage cap (`StageGuard` in
app/resilience.py tells these apart). Our own deadline cutting a call says nothing.

The clock is injected (tests step time instead of sleeping); the state is a Prometheus gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TypeVar

from app import metrics
from app.config import GatewaySettings
from app.errors import (
    CircuitOpen,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)
from app.logs import get_logger
from app.types import Clock

log = get_logger(__name__)
T = TypeVar("T")
# "Does the dependency answer now?" -- a cheap call that no model work queues behind.
Probe = Callable[[], Awaitable[bool]]

# Errors that say "your request is wrong" or "busy right now", not "this component is broken".
NOT_A_FAULT: tuple[type[BaseException], ...] = (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Overloaded,
)


class Verdict(Enum):
    """What one call says about the dependency (the `outcome` label of CIRCUIT_CALLS)."""

    OK = "ok"  # it answered
    BUSY = "busy"  # it answered 429: working, at capacity
    REJECTED = "rejected"  # it refused the request (4xx): working, the request was wrong
    DEADLINE = "deadline"  # our deadline ran out first, or it said so: says nothing
    SLOW = "slow"  # timed out while it answered other calls (or its probe): behind, not dead
    HANG = "hang"  # timed out, answered nothing meanwhile, and failed its probe
    ERROR = "error"  # refused or dropped the connection, 5xx, an answer we cannot read
    REFUSED = "refused"  # not attempted: the breaker was open

    @property
    def fault(self) -> bool:
        return self in (Verdict.HANG, Verdict.ERROR)

    @property
    def answered(self) -> bool:
        """The dependency itself said something (evidence that it is alive)."""
        return self in (Verdict.OK, Verdict.BUSY, Verdict.REJECTED)


def verdict_of(error: BaseException) -> Verdict:
    """The verdict of a call that raised `error` (not a timeout of ours: see StageGuard)."""
    if isinstance(error, Overloaded):
        return Verdict.BUSY
    if isinstance(error, NOT_A_FAULT):
        return Verdict.REJECTED
    if isinstance(error, DeadlineExceeded | asyncio.CancelledError):
        return Verdict.DEADLINE
    return Verdict.ERROR


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
    recovery_s: float  # open this long, then let one trial call through
    probe_interval_s: float  # with a probe: ask this often at most while open
    half_open_probes: int = 1  # concurrent trial calls while half-open

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> BreakerPolicy:
        return cls(
            failure_threshold=settings.breaker_failure_threshold,
            window_s=settings.breaker_window_s,
            error_rate=settings.breaker_error_rate,
            min_calls=settings.breaker_min_calls,
            recovery_s=settings.breaker_recovery_s,
            probe_interval_s=settings.breaker_probe_interval_s,
        )


@dataclass(frozen=True)
class Permit:
    """What `CircuitBreaker.allow` handed out: under which state (its epoch) and whether as a
    half-open probe. A verdict only counts for the state that admitted the call: a call let
    through while closed that ends after the breaker tripped says nothing about the probe."""

    epoch: int
    probe: bool


class CircuitBreaker:
    """Closed -> (faults) -> open -> (probe answers, or recovery_s then a trial call succeeds)
    -> closed.

    With a `probe`, an open breaker asks the dependency in the background (after a tenth of
    `probe_interval_s`, doubling up to it) and closes as soon as it answers, instead of
    refusing for a fixed window.
    """

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        clock: Clock = time.monotonic,
        probe: Probe | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.probe = probe
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped on every state change
        self._opened_at = 0.0
        self._next_probe_at = 0.0
        self._consecutive = 0
        self._events: deque[tuple[float, bool]] = deque()
        self._failed = 0  # failures among _events: counted as they come and go, not summed
        self._probes = 0
        self._prober: asyncio.Task[None] | None = None
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
        metrics.CIRCUIT_CALLS.labels(self.name, Verdict.REFUSED.value).inc()
        now = self._clock()
        wait = self.policy.recovery_s - (now - self._opened_at)
        if self._prober is not None and not self._prober.done():
            wait = min(wait, self._next_probe_at - now)
        raise CircuitOpen(f"{self.name} circuit is open", retry_after_s=max(1.0, wait))

    def settle(self, permit: Permit, verdict: Verdict) -> None:
        """Count the verdict of a call that `allow` let through."""
        metrics.CIRCUIT_CALLS.labels(self.name, verdict.value).inc()
        if verdict is Verdict.DEADLINE:
            self.release(permit)
        else:
            self.record(permit, not verdict.fault)

    def record(self, permit: Permit, ok: bool) -> None:
        """The outcome of a call that `allow` let through."""
        if permit.epoch != self._epoch:
            return  # admitted under an earlier state: stale news
        now = self._clock()
        if permit.probe:
            self._probes = max(0, self._probes - 1)
            if ok:
                self._close()
            else:
                self._trip(now)
            return
        self._events.append((now, ok))
        self._failed += not ok
        while self._events and self._events[0][0] < now - self.policy.window_s:
            self._failed -= not self._events.popleft()[1]
        self._consecutive = 0 if ok else self._consecutive + 1
        rate_tripped = (
            len(self._events) >= self.policy.min_calls
            and self._failed / len(self._events) >= self.policy.error_rate
        )
        if self._consecutive >= self.policy.failure_threshold or rate_tripped:
            self._trip(now)

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        permit = self.allow()
        try:
            result = await work()
        except BaseException as exc:
            self.settle(permit, verdict_of(exc))
            raise
        self.settle(permit, Verdict.OK)
        return result

    def release(self, permit: Permit) -> None:
        """A call `allow` let through ended without a verdict; free its probe slot."""
        if permit.probe and permit.epoch == self._epoch:
            self._probes = max(0, self._probes - 1)

    async def stop(self) -> None:
        """Stop probing in the background."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None

    def _trip(self, now: float) -> None:
        self._opened_at = now
        self._reset()
        self._move(BreakerState.OPEN)
        if self.probe is not None and (self._prober is None or self._prober.done()):
            with contextlib.suppress(RuntimeError):  # no event loop: trial calls only
                self._prober = asyncio.get_running_loop().create_task(
                    self._probe_until_answered(self.probe), name=f"breaker-probe-{self.name}"
                )

    async def _probe_until_answered(self, probe: Probe) -> None:
        delay = self.policy.probe_interval_s / 10
        while True:
            self._next_probe_at = self._clock() + delay
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # no herd of gateways
            if self._closed():
                return  # a trial call closed it meanwhile
            try:
                answered = await probe()
            except Exception as exc:  # a probe that raises has not answered
                log.debug("breaker_probe_failed", circuit=self.name, error=repr(exc))
                answered = False
            if answered:
                log.info("breaker_probe_answered", circuit=self.name)
                self._close()
                return
            delay = min(2 * delay, self.policy.probe_interval_s)

    def _closed(self) -> bool:
        return self._state is BreakerState.CLOSED

    def _close(self) -> None:
        self._reset()
        self._move(BreakerState.CLOSED)

    def _reset(self) -> None:
        self._consecutive = 0
        self._events.clear()
        self._failed = 0
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
