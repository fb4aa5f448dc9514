"""Circuit breaker (stepped clock), deadline, backoff, bulkhead and the composed StageGuard."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from app.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from app.config import GatewaySettings
from app.errors import CircuitOpen, DeadlineExceeded, InvalidInput, Overloaded, Unavailable
from app.resilience import (
    Bulkhead,
    Deadline,
    RetryPolicy,
    StageGuard,
    backoff,
    call_deadline,
)


def policy(**fields: float) -> BreakerPolicy:
    """The settings' breaker policy with `fields` changed."""
    return replace(BreakerPolicy.from_settings(GatewaySettings()), **fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(name: str, circuit: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"name": circuit})


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise Unavailable("down")


async def bad_request() -> str:
    raise InvalidInput("your fault")


async def test_consecutive_failures_open_then_recovery_probes_close() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t-consecutive", policy(failure_threshold=3, recovery_s=10), clock)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await breaker.call(fail)
    assert breaker.state is BreakerState.OPEN
    assert gauge("semsearch_circuit_open", "t-consecutive") == 1
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(ok)
    assert refused.value.retry_after_s == pytest.approx(10)

    clock.now += 10
    assert breaker.state is BreakerState.HALF_OPEN
    assert gauge("semsearch_circuit_state", "t-consecutive") == 2
    assert await breaker.call(ok) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert gauge("semsearch_circuit_open", "t-consecutive") == 0


async def test_failed_probe_reopens_for_another_recovery_period() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t-probe", policy(failure_threshold=1, recovery_s=5), clock)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    clock.now += 5
    with pytest.raises(Unavailable):
        await breaker.call(fail)  # the probe
    assert breaker.state is BreakerState.OPEN
    clock.now += 4.9
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)


async def test_half_open_lets_only_the_allowed_probes_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t-probes", policy(failure_threshold=1, recovery_s=1), clock)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    clock.now += 1
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    probe = asyncio.ensure_future(breaker.call(slow_ok))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)  # the one probe slot is taken
    gate.set()
    assert await probe == "ok"
    assert breaker.state is BreakerState.CLOSED


async def test_a_call_admitted_before_the_trip_neither_frees_nor_decides_a_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t-stale", policy(failure_threshold=1, recovery_s=1), clock)
    gates = [asyncio.Event(), asyncio.Event()]

    async def waits(gate: asyncio.Event, outcome: str) -> str:
        await gate.wait()
        if outcome == "fail":
            raise Unavailable("down")
        return outcome

    # admitted while closed, still running when the breaker trips and goes half-open
    early = asyncio.ensure_future(breaker.call(lambda: waits(gates[0], "ok")))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    clock.now += 1
    probe = asyncio.ensure_future(breaker.call(lambda: waits(gates[1], "fail")))
    await asyncio.sleep(0)

    early.cancel()  # ends without a verdict: must not free the probe's slot
    with pytest.raises(asyncio.CancelledError):
        await early
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    assert breaker.state is BreakerState.HALF_OPEN

    gates[1].set()  # the real probe fails: open again
    with pytest.raises(Unavailable):
        await probe
    assert breaker.state is BreakerState.OPEN


async def test_a_late_success_from_before_the_trip_does_not_close_the_breaker() -> None:
    clock = Clock()
    breaker = CircuitBreaker("t-late", policy(failure_threshold=1, recovery_s=1), clock)
    gate = asyncio.Event()

    async def slow_ok() -> str:
        await gate.wait()
        return "ok"

    early = asyncio.ensure_future(breaker.call(slow_ok))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN
    gate.set()
    assert await early == "ok"
    assert breaker.state is BreakerState.HALF_OPEN  # only a probe decides


async def test_error_rate_over_the_window_opens() -> None:
    clock = Clock()
    rate = policy(failure_threshold=100, error_rate=0.5, min_calls=10, window_s=30)
    breaker = CircuitBreaker("t-rate", rate, clock)
    for i in range(10):  # alternate: never 2 consecutive failures, but 50% errors
        clock.now += 1
        if i % 2:
            with pytest.raises(Unavailable):
                await breaker.call(fail)
        else:
            await breaker.call(ok)
    assert breaker.state is BreakerState.OPEN


async def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    rate = policy(failure_threshold=100, error_rate=0.5, min_calls=4, window_s=10)
    breaker = CircuitBreaker("t-window", rate, clock)
    for _ in range(3):
        with pytest.raises(Unavailable):
            await breaker.call(fail)
    clock.now += 11
    for _ in range(4):
        await breaker.call(ok)
    assert breaker.state is BreakerState.CLOSED


async def test_client_errors_do_not_count_as_faults() -> None:
    breaker = CircuitBreaker("t-client", policy(failure_threshold=2), Clock())
    for _ in range(5):
        with pytest.raises(InvalidInput):
            await breaker.call(bad_request)
    assert breaker.state is BreakerState.CLOSED


def test_deadline_and_backoff() -> None:
    clock = Clock()
    deadline = Deadline(2.0, clock)
    clock.now += 0.5
    assert deadline.remaining() == pytest.approx(1.5)
    assert deadline.cap(10) == pytest.approx(1.5) and deadline.cap(0.2) == 0.2
    clock.now += 5
    assert deadline.remaining() == 0
    retry = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.3)
    assert backoff(retry, 1, rng=lambda: 1.0) == pytest.approx(0.2)
    assert backoff(retry, 5, rng=lambda: 1.0) == pytest.approx(0.3)  # capped
    assert backoff(retry, 5, rng=lambda: 0.0) == 0


async def test_bulkhead_limits_concurrency_and_refuses_after_waiting() -> None:
    bulkhead = Bulkhead("t-bulkhead", limit=2)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    holders = [asyncio.ensure_future(bulkhead.run(work, wait_s=5)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await bulkhead.run(work, wait_s=0.05)
    gate.set()
    await asyncio.gather(*holders)
    assert peak == 2


def guard(name: str, *, attempts: int = 3, timeout_s: float = 1.0) -> StageGuard:
    async def no_sleep(_: float) -> None:
        return None

    return StageGuard(
        name=name,
        breaker=CircuitBreaker(name, policy(failure_threshold=10)),
        bulkhead=Bulkhead(name, 4),
        timeout_s=timeout_s,
        retry=RetryPolicy(attempts=attempts, base_delay_s=0.001),
        sleep=no_sleep,
    )


async def test_guard_retries_transient_faults_only() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Unavailable("blip")
        return "ok"

    assert await guard("t-g1").run(flaky, Deadline(5)) == "ok"
    assert calls == 3

    counted = 0

    async def invalid() -> str:
        nonlocal counted
        counted += 1
        raise InvalidInput("no")

    with pytest.raises(InvalidInput):
        await guard("t-g2").run(invalid, Deadline(5))
    assert counted == 1


async def test_guard_cuts_each_try_to_the_deadline() -> None:
    async def hangs() -> str:
        await asyncio.sleep(10)
        return "never"

    started = asyncio.get_running_loop().time()
    with pytest.raises(DeadlineExceeded):
        await guard("t-g3", timeout_s=5).run(hangs, Deadline(0.1))
    assert asyncio.get_running_loop().time() - started < 1

    # a per-try timeout with budget left is a fault worth retrying
    tries = 0

    async def slow_then_fast() -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            await asyncio.sleep(10)
        return "ok"

    assert await guard("t-g4", timeout_s=0.05).run(slow_then_fast, Deadline(5)) == "ok"
    assert tries == 2


async def test_guard_gives_up_when_the_breaker_is_open() -> None:
    g = guard("t-g5", attempts=1)
    g.breaker = CircuitBreaker("t-g5", policy(failure_threshold=1, recovery_s=60))
    with pytest.raises(Unavailable):
        await g.run(fail, Deadline(5))
    with pytest.raises(CircuitOpen):
        await g.run(ok, Deadline(5))


async def test_a_try_cut_by_the_requests_own_deadline_does_not_count_against_the_dependency() -> (
    None
):
    g = guard("t-g6", attempts=1, timeout_s=5)
    g.breaker = CircuitBreaker("t-g6", policy(failure_threshold=1))

    async def slow() -> str:
        await asyncio.sleep(1)
        return "late"

    for _ in range(3):
        with pytest.raises(DeadlineExceeded):
            await g.run(slow, Deadline(0.02))  # the request had 20 ms; the stage allows 5 s
    assert g.breaker.state is BreakerState.CLOSED
    # ...but the stage's own timeout elapsing is the dependency's fault
    g.timeout_s = 0.02
    with pytest.raises(Unavailable, match="timed out"):
        await g.run(slow, Deadline(5))
    assert g.breaker.state is BreakerState.OPEN


def calls(circuit: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "semsearch_circuit_calls_total", {"name": circuit, "outcome": outcome}
    )
    return value or 0.0


async def busy() -> str:
    raise Overloaded("429: queue would answer too late")


async def test_busy_answers_and_the_dependencys_own_504_never_count() -> None:
    breaker = CircuitBreaker("t-busy", policy(failure_threshold=1))

    async def its_504() -> str:
        raise DeadlineExceeded("the caller's deadline passed in the queue")

    for _ in range(5):
        with pytest.raises(Overloaded):
            await breaker.call(busy)
        with pytest.raises(DeadlineExceeded):
            await breaker.call(its_504)
    assert breaker.state is BreakerState.CLOSED
    assert calls("t-busy", "busy") == 5 and calls("t-busy", "deadline") == 5


async def test_a_timeout_while_the_dependency_answers_other_calls_is_slow_not_dead() -> None:
    g = guard("t-slow", attempts=1, timeout_s=0.05)
    g.breaker = CircuitBreaker("t-slow", policy(failure_threshold=1))

    async def stuck() -> str:
        await asyncio.sleep(1)
        return "late"

    async def answers_soon() -> str:
        await asyncio.sleep(0.01)
        return "ok"

    hung = asyncio.ensure_future(g.run(stuck, Deadline(5)))
    assert await g.run(answers_soon, Deadline(5)) == "ok"  # it answered meanwhile
    with pytest.raises(Overloaded, match="busy"):
        await hung  # cut by the stage cap: behind, so 429 rather than "down"
    assert g.breaker.state is BreakerState.CLOSED
    assert calls("t-slow", "slow") == 1


@pytest.mark.parametrize(("alive", "state"), [(True, "closed"), (False, "open")])
async def test_a_silent_timeout_is_a_hang_only_if_the_probe_fails_too(
    alive: bool, state: str
) -> None:
    asked = asyncio.Event()

    async def probe() -> bool:
        asked.set()
        return alive

    name = f"t-judge-{alive}"
    g = guard(name, attempts=1, timeout_s=0.02)
    g.breaker = CircuitBreaker(name, policy(failure_threshold=1), probe=probe)

    async def silent() -> str:
        await asyncio.sleep(1)
        return "late"

    with pytest.raises(Unavailable, match="timed out"):
        await g.run(silent, Deadline(5))
    await asyncio.wait_for(asked.wait(), 1)
    await asyncio.sleep(0)  # the verdict is recorded right after the probe answers
    assert g.breaker.state.name.lower() == state
    assert calls(name, "hang" if not alive else "slow") == 1
    await g.breaker.stop()


async def test_an_open_breaker_with_a_probe_closes_as_soon_as_the_dependency_answers() -> None:
    up = False
    probes = 0

    async def probe() -> bool:
        nonlocal probes
        probes += 1
        return up

    # recovery_s is an hour: only the background probe can close it
    breaker = CircuitBreaker(
        "t-probe-close",
        policy(failure_threshold=1, recovery_s=3600, probe_interval_s=0.05),
        probe=probe,
    )
    with pytest.raises(Unavailable):
        await breaker.call(fail)
    with pytest.raises(CircuitOpen) as refused:
        await breaker.call(ok)
    assert refused.value.retry_after_s == 1  # the next probe is due well within a second
    await asyncio.sleep(0.2)
    assert breaker.state is BreakerState.OPEN and probes >= 2  # asked, doubling up to 50 ms
    up = True
    await asyncio.sleep(0.15)
    assert breaker.state is BreakerState.CLOSED
    assert await breaker.call(ok) == "ok"
    await breaker.stop()


async def test_optional_work_does_not_wait_for_a_slot() -> None:
    bulkhead = Bulkhead("t-no-wait", limit=1)
    assert await bulkhead.run(ok, wait_s=0) == "ok"  # a free slot is taken at once
    gate = asyncio.Event()

    async def holds() -> str:
        await gate.wait()
        return "held"

    holder = asyncio.ensure_future(bulkhead.run(holds, wait_s=0))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):
        await bulkhead.run(ok, wait_s=0)
    gate.set()
    assert await holder == "held"


async def test_each_try_tells_the_dependency_how_long_the_caller_waits() -> None:
    seen: list[float | None] = []

    async def looks() -> str:
        seen.append(call_deadline.get())
        return "ok"

    loop = asyncio.get_running_loop()
    before = loop.time()
    await guard("t-told", timeout_s=0.5).run(looks, Deadline(5))
    assert seen[0] is not None
    assert before + 0.4 < seen[0] <= loop.time() + 0.5  # the stage cap, as it is shorter
    assert call_deadline.get() is None  # only for the call
    await guard("t-told-2", timeout_s=5).run(looks, Deadline(0.3))
    assert seen[1] is not None and seen[1] <= loop.time() + 0.3  # the request's deadline
