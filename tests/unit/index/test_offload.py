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


async def test_unmeasured_work_goes_to_a_thread_then_short_work_stays_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=0.05)
    assert await offload.run(lambda: burn(0.001)) != loop_thread  # no estimate yet
    assert offload.typical_s is not None and offload.typical_s < 0.05
    assert await offload.run(lambda: burn(0.001)) == loop_thread


async def test_work_that_turns_long_moves_back_to_a_thread() -> None:
    loop_thread = threading.get_ident()
    offload = Offload(inline_below_s=0.01)
    await offload.run(lambda: burn(0.0))
    assert offload.inline
    while offload.inline:  # each long call raises the running estimate
        await offload.run(lambda: burn(0.03))
    assert await offload.run(lambda: burn(0.0)) != loop_thread
    # the estimate falls again with short calls measured in the thread
    for _ in range(30):
        await offload.run(lambda: burn(0.0))
    assert offload.inline


async def test_a_failure_is_raised_where_it_ran_and_still_measured() -> None:
    offload = Offload(inline_below_s=1.0)

    def fail() -> None:
        raise ValueError("broken")

    for _ in range(2):  # in a thread, then on the loop
        with pytest.raises(ValueError, match="broken"):
            await offload.run(fail)
        assert offload.typical_s is not None


async def test_on_the_loop_a_wait_counts_as_much_as_work() -> None:
    """A call that sleeps (a cold page cache, say) stalls the loop as much as one that works:
    once measured on the loop, it goes back to a thread."""
    offload = Offload(inline_below_s=0.01)
    await offload.run(lambda: burn(0.0))
    assert offload.inline
    while offload.inline:
        await offload.run(lambda: time.sleep(0.03))
    assert offload.typical_s is not None and offload.typical_s >= 0.01
