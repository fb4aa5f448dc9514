"""Short index work runs on the event loop, long or not yet measured work in a thread."""

from __future__ import annotations

import threading
import time

import pytest

from app.index.offload import Offload


def burn(cpu_s: float) -> int:
    """Use `cpu_s` of this thread's CPU time; the thread it ran on."""
    started = time.thread_time()
    while time.thread_time() - started < cpu_s:
        pass
    return threading.get_ident()


def wait(seconds: float) -> int:
    """Wait without using the CPU (as for a disk read); the thread it ran on."""
    time.sleep(seconds)
    return threading.get_ident()


async def test_unmeasured_work_goes_to_a_thread_then_short_work_stays_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=0.05)
    assert await offload.run(lambda: burn(0.001)) != loop_thread  # no estimate yet
    assert offload.typical_s is not None and offload.typical_s < 0.05
    assert await offload.run(lambda: burn(0.001)) == loop_thread


async def test_work_that_turns_long_moves_back_to_a_thread_and_returns_when_short() -> None:
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=0.01)
    await offload.run(lambda: burn(0.0))
    assert offload.inline
    for _ in range(20):  # each long call raises the running estimate
        await offload.run(lambda: burn(0.03))
        if not offload.inline:
            break
    else:
        pytest.fail(f"still on the loop with an estimate of {offload.typical_s}")
    assert await offload.run(lambda: burn(0.0)) != loop_thread
    for _ in range(40):  # the estimate falls with short calls measured in the thread
        if await offload.run(lambda: burn(0.0)) == loop_thread:
            break
    else:
        pytest.fail(f"never back on the loop, estimate {offload.typical_s}")


async def test_stalls_on_the_loop_send_the_kind_to_a_thread_for_twice_as_long_each_time() -> None:
    """CPU time does not count a wait for the disk: a call cheap in a thread may still stall
    the loop. Each stall in a row keeps it in a thread for twice as many runs."""
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=0.01)
    await offload.run(lambda: burn(0.0))
    for spell in (1, 2, 4):  # every run on the loop stalls: a disk that stays cold
        assert await offload.run(lambda: wait(0.012)) == loop_thread
        threads = [await offload.run(lambda: burn(0.0)) != loop_thread for _ in range(spell)]
        assert threads == [True] * spell and offload.inline, (spell, threads)
    # a run on the loop within the bound forgives the stalls: the next stall costs one run
    assert await offload.run(lambda: burn(0.0)) == loop_thread
    assert await offload.run(lambda: wait(0.012)) == loop_thread
    assert await offload.run(lambda: burn(0.0)) != loop_thread
    assert await offload.run(lambda: burn(0.0)) == loop_thread


async def test_a_failure_is_raised_where_it_ran_and_still_measured() -> None:
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=1.0)
    ran_on: list[int] = []

    def fail() -> None:
        ran_on.append(threading.get_ident())
        raise ValueError("broken")

    for _ in range(2):  # in a thread, then on the loop
        with pytest.raises(ValueError, match="broken"):
            await offload.run(fail)
    assert ran_on[0] != loop_thread and ran_on[1] == loop_thread
    assert offload.typical_s is not None and offload.inline
