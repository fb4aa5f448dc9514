"""Where a search's index work runs: on the event loop when it is short, in a thread when not.

A worker thread keeps the event loop free while FAISS or SQLite work, but the hop is not free:
the hand-over and the wake-up back, and then two threads taking turns at the GIL for the
Python part of the work (turning rows into hits). Measured in the gateway on this 2-core host
(in-process ASGI, hybrid search of a 300-document collection, one search at a time, the dense
and the lexical list each ~1 ms of work): 14.1-15.1 ms of CPU per search with both lists in
threads, 10.2-10.8 ms with both on the loop. Work that short costs more to send away than to
do; work that is long (a large flat index, a filter matching half the collection) must not
stall every other request on the loop.

So each kind of call keeps a running estimate of how long it holds its thread and runs on the
loop while that is under `INLINE_BELOW_S`. On the loop the estimate takes the wall clock,
which is what every other request waited (disk reads of a cold page cache included). In a
worker thread it takes the thread's CPU time (`time.thread_time`): there the wall clock also
counts the waits for the GIL behind the loop, which would keep work in threads exactly when the
hop costs most, under load. A kind with no estimate yet goes to a thread: the first search of
a large collection must not be the one that stalls the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# A stall of the event loop this short is cheaper than the hop (measured above: the hop
# cost ~2 ms of CPU per list); SciFact's 10k-chunk flat index (FAISS ~0.9 ms plus the rows of
# a hundred candidates, ~0.6 ms) stays under it.
INLINE_BELOW_S = 0.002
_WEIGHT = 0.2  # of the newest call in the running estimate


class Offload:
    """Runs one kind of call (say, an unfiltered dense search) where it costs least."""

    def __init__(self, inline_below_s: float = INLINE_BELOW_S) -> None:
        self.inline_below_s = inline_below_s
        self.typical_s: float | None = None  # per call, a running average

    @property
    def inline(self) -> bool:
        return self.typical_s is not None and self.typical_s < self.inline_below_s

    async def run(self, work: Callable[[], T]) -> T:
        if self.inline:
            return self._timed(work, time.perf_counter)
        return await asyncio.to_thread(self._timed, work, time.thread_time)

    def _timed(self, work: Callable[[], T], clock: Callable[[], float]) -> T:
        started = clock()
        try:
            return work()
        finally:
            took = clock() - started
            self.typical_s = (
                took if self.typical_s is None else (1 - _WEIGHT) * self.typical_s + _WEIGHT * took
            )
