"""Where a search's index work runs: on the event loop when it is short, in a thread when not.

A worker thread keeps the event loop free while FAISS or SQLite work, but the hop is not free:
the hand-over and the wake-up back, and then two threads taking turns at the GIL for the
Python part of the work (turning rows into hits). Measured in the gateway on this 2-core host
(in-process ASGI, hybrid search of a 300-document collection, one search at a time, the dense
and the lexical list each ~1 ms of work): 14.1-15.1 ms of CPU per search with both lists in
threads, 10.2-10.8 ms with both on the loop. Work that short costs more to send away than to
do; work that is long (a large flat index) must not stall every other request on the loop.

So each kind of call keeps a running estimate of how long it holds its thread and runs on the
loop while that is under `INLINE_BELOW_S`. On the loop the estimate takes the wall clock,
which is what every other request waited. In a worker thread it takes the thread's CPU time
(`time.thread_time`): there the wall clock also counts the waits for the GIL behind the loop,
which would keep work in threads exactly when the hop costs most, under load. A kind with no
estimate yet goes to a thread: the first search of a large collection must not be the one
that stalls the loop.

CPU time does not see a wait for the disk (a cold page cache), so a call that is cheap in a
thread can still stall the loop. Each run on the loop that goes over the bound sends the kind
back to a thread for a while, twice as long each time in a row (1, 2, 4, ... runs, at most
1024), so work that keeps waiting for the disk stalls the loop ever more rarely, and a
one-off (the loop's thread descheduled) costs a single run in a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# A stall of the event loop this short is cheaper than the hop (measured above: the hop
# cost ~2 ms of CPU per list). A lone query's FAISS flat search of SciFact's 10k chunks (k=100)
# takes 1.6-2.0 ms on this 2-core host, in a process of its own as in the gateway, and ~0.4 ms
# more to make hits of its hundred candidates once their rows are kept in memory
# (`app.index.faiss.generation`): ~2.4 ms in all, so it runs in a thread. numpy's product on
# one thread scans the same vectors in 0.9 ms back to back but 2.0 ms right after an
# embedding, which pushes the 15 MB of vectors out of the cache: the scan is bound by memory,
# and neither library brings a lone query under this bound at this size.
INLINE_BELOW_S = 0.002
_WEIGHT = 0.2  # of the newest call in the running estimate
_MOST_STRIKES = 10  # the longest spell in a thread after stalls: 2**10 runs


class Offload:
    """Runs one kind of call (say, a lone query's dense search) where it costs least.

    The fields are written from worker threads without a lock: a lost update only makes the
    estimate a little older."""

    def __init__(self, inline_below_s: float = INLINE_BELOW_S) -> None:
        self.inline_below_s = inline_below_s
        self.typical_s: float | None = None  # per call, a running average
        self._strikes = 0  # runs on the loop in a row that went over the bound
        self._thread_runs_left = 0  # before the loop is tried again

    @property
    def inline(self) -> bool:
        return (
            self.typical_s is not None
            and self.typical_s < self.inline_below_s
            and self._thread_runs_left == 0
        )

    async def run(self, work: Callable[[], T]) -> T:
        if not self.inline:
            self._thread_runs_left = max(0, self._thread_runs_left - 1)
            return await asyncio.to_thread(self._in_thread, work)
        started = time.perf_counter()
        try:
            return work()
        finally:
            took = time.perf_counter() - started
            self._record(took)
            if took < self.inline_below_s:
                self._strikes = 0
            else:
                self._thread_runs_left = 2 ** min(self._strikes, _MOST_STRIKES)
                self._strikes += 1

    def _in_thread(self, work: Callable[[], T]) -> T:
        started = time.thread_time()
        try:
            return work()
        finally:
            self._record(time.thread_time() - started)

    def _record(self, took: float) -> None:
        self.typical_s = (
            took if self.typical_s is None else (1 - _WEIGHT) * self.typical_s + _WEIGHT * took
        )
