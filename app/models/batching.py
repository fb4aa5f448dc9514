"""BatchQueue: the one component that turns many small requests into few large model calls.

Every item of every request gets a future. A single batcher task cuts batches by item count,
by a padded-token budget (longest item x items, what a forward pass really costs) and by a
short maximum wait, grouping items of similar length so little compute goes to padding. The
model runs on a worker thread while the next batch accumulates (a second worker takes one
beside it while queries come one at a time: SIDE_BY_SIDE_AFTER). The queue is bounded: a
request that does not fit is refused at once (429), as is one whose caller said how long it
waits (`call_deadline`) when the queue ahead of it, costed by what recent batches took
(`app.models.cost`), would answer later. Items whose caller went away (its task cancelled,
e.g. on client disconnect) or whose deadline passed are dropped before compute and stop
counting toward the bound at once. A request larger than the whole queue is admitted only
when nothing else waits, and is fed in pieces that fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

from app import metrics
from app.errors import DeadlineExceeded, Overloaded, Unavailable
from app.logs import get_logger
from app.models.batch_limits import BatchLimits
from app.models.cost import BatchCost
from app.models.priority import (
    BULK_BATCH_S,
    BULK_BATCH_SHARE,
    QUERIES_RECENT_S,
    Priority,
    work_priority,
)
from app.models.timing import request_timing
from app.resilience import call_deadline

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Entry(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R]
    deadline: float | None = None  # time.monotonic() after which nobody waits for it
    priority: Priority = Priority.INTERACTIVE  # bulk items wait while interactive ones do
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True  # waiting in `_pending` (not yet taken into a batch)
    request: list[_Entry[T, R]] = field(default_factory=list, repr=False)  # all its items
    batch: int = -1  # which batch computed it, and how long that batch took
    compute_s: float = 0.0


# Batches compute side by side (on a share of the CPU threads each) only while requests come
# one at a time: each of the last this many batches held one item, as does what waits. A
# lone query's forward pass keeps a second core mostly idle, so two at once on a core each
# beat them one after the other on two: the gateway (embedded models, 2 cores, interleaved
# A/B) answered 31.9 vs 21.9 searches/s at 2 clients and 40.6 vs 32.6 at 4. Where requests
# overlap, one merged batch on every core is better: earlier rules (any free worker; then
# batches under 256 tokens) cost the embedder service 8-11% at 5-15 clients, the returning
# requests cut into many small batches.
SIDE_BY_SIDE_AFTER = 8


class BatchQueue(Generic[T, R]):
    """Submit items, get results in order; `compute` sees batches on an executor's thread.

    One batch computes per executor at most (each a worker): a batch goes to the first one
    free, so with a second worker for side-by-side batches (SIDE_BY_SIDE_AFTER) the batches
    of a busy queue all run on the first one's thread: each thread has its own torch/OpenMP
    pool, which spins for a while after its batch, and batches taking turns on two threads
    answered 35.4 queries/s at 5 clients where one thread answered 66.6.

    `compute(items)` must return one result per item, in order. `size_of(item)` is its length
    in tokens.
    """

    def __init__(
        self,
        compute: Callable[[list[T]], Sequence[R]],
        *,
        size_of: Callable[[T], int],
        executors: Sequence[Executor],
        limits: BatchLimits,
        kind: str,
    ) -> None:
        self._compute = compute
        self._size_of = size_of
        self._executors = list(executors)
        self._workers = len(self._executors)
        self._busy: set[int] = set()  # executors computing, by index
        self.limits = limits
        self.kind = kind
        self._pending: list[_Entry[T, R]] = []
        # Live queued items: `_pending` may still hold items whose caller went away.
        self._queued = 0
        # Items of an oversized request not queued yet: they hold their place in the bound.
        self._reserved = 0
        # the batches on the model, by number: their items, and their tokens, class and start
        self._inflight: dict[int, list[_Entry[T, R]]] = {}
        self._computing: dict[int, tuple[int, Priority, float]] = {}
        self._executing: set[asyncio.Task[None]] = set()
        self._started = 0  # batches started, which numbers them
        self._recent_sizes: deque[int] = deque(maxlen=SIDE_BY_SIDE_AFTER)  # items per batch
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._items_per_s = 0.0  # smoothed throughput, for Retry-After
        # What a batch of n tokens takes, per class (each priced by its own batches only: a
        # class not measured yet is not held against anyone), for the expected wait.
        self._cost = {Priority.INTERACTIVE: BatchCost(), Priority.BULK: BatchCost()}
        # tokens of the live queued items, by class: a query waits behind queries only
        self._queued_tokens = {Priority.INTERACTIVE: 0, Priority.BULK: 0}
        self._batches = 0
        self._last_priority = Priority.BULK  # the class of the batch cut last
        self._last_query = -math.inf  # time.monotonic() of the last interactive submit

    @property
    def depth(self) -> int:
        """Items waiting for the model (not cancelled, not yet in a batch)."""
        return self._queued

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self.kind}")

    async def stop(self) -> None:
        """Stop batching; every request still waiting (queued or computing) gets `Unavailable`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in self._executing:
            task.cancel()
        await asyncio.gather(*self._executing, return_exceptions=True)
        computing = [entry for batch in self._inflight.values() for entry in batch]
        for entry in [*computing, *self._pending]:
            if not entry.future.done():
                entry.future.set_exception(Unavailable(f"{self.kind} model is shutting down"))
        self._inflight.clear()
        self._computing.clear()
        self._pending.clear()

    def expected_wait(self, tokens: int, priority: Priority = Priority.INTERACTIVE) -> float:
        """Seconds until `tokens` more tokens of class `priority` would be computed, at what
        recent batches of each class cost: the rest of the batches on the model, then the
        queue ahead of them (for a query: the queries, and the one bulk batch that may take
        its turn first), then their own batch. While requests come one at a time the workers
        run side by side: then only until the first is free, and the queue is shared."""
        now = time.monotonic()
        left = [
            self._cost[kind].seconds(tokens) - (now - since)
            for tokens, kind, since in self._computing.values()
        ]
        own = self._cost[priority].seconds(tokens)
        if not self._one_at_a_time():  # a busy queue waits for every batch on the model
            return max([0.0, *left]) + self._queue_wait(tokens, priority)
        rest = max(0.0, min(left)) if len(left) >= self._workers else 0.0
        return rest + (self._queue_wait(tokens, priority) - own) / self._workers + own

    def _queue_wait(self, tokens: int, priority: Priority) -> float:
        queries, passages = self._cost[Priority.INTERACTIVE], self._cost[Priority.BULK]
        ahead = self._queued_tokens[Priority.INTERACTIVE]
        bulk = self._queued_tokens[Priority.BULK]
        full, bulk_batch = self.limits.max_batch_tokens, self._bulk_batch_tokens
        if priority is Priority.BULK:
            return queries.seconds(ahead, math.ceil(ahead / full)) + passages.seconds(
                bulk + tokens, math.ceil((bulk + tokens) / bulk_batch)
            )
        return queries.seconds(
            ahead + tokens, math.ceil((ahead + tokens) / full)
        ) + passages.seconds(min(bulk, bulk_batch))

    @property
    def _bulk_batch_tokens(self) -> int:
        """The token budget of a bulk batch: a share of a full one, and while searches are
        coming, what its measured cost fits in BULK_BATCH_S (app.models.priority)."""
        share = max(1, self.limits.max_batch_tokens // BULK_BATCH_SHARE)
        cost = self._cost[Priority.BULK]
        quiet = time.monotonic() - self._last_query > QUERIES_RECENT_S
        if quiet or not cost.known or cost.per_token_s <= 0:
            return share
        return max(1, min(share, int((BULK_BATCH_S - cost.fixed_s) / cost.per_token_s)))

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, in order.

        A request larger than the whole queue (`max_queued_items`) is admitted when nothing else
        waits, and queued a piece at a time while its remaining items hold their place, so
        in-process callers can submit any number of items and the queue stays bounded.

        Raises:
            Overloaded: the queue cannot take `len(items)` more items right now (nothing queued),
                or the work ahead would answer after the caller's `call_deadline`.
            DeadlineExceeded: the deadline passed while the items waited.
            Unavailable: the batcher is not running, or stopped before the answer.
        """
        if self._task is None or self._task.done():
            raise Unavailable(f"{self.kind} batcher is not running")
        room = self.limits.max_queued_items
        waiting = self._queued + self._reserved
        oversized = len(items) > room
        if waiting > 0 if oversized else waiting + len(items) > room:
            metrics.SHED_REQUESTS.labels("queue_full").inc()
            raise Overloaded(
                f"{self.kind} queue is full ({waiting} items waiting)",
                retry_after_s=self._retry_after(len(items)),
            )
        self._refuse_if_too_late(items)
        if not oversized:
            return await self._submit(items)
        results: list[R] = []
        unqueued = len(items)
        self._reserved += unqueued
        try:
            for start in range(0, len(items), room):
                piece = items[start : start + room]
                self._reserved -= len(piece)
                unqueued -= len(piece)
                results.extend(await self._submit(piece))
        finally:
            self._reserved -= unqueued
        return results

    def _refuse_if_too_late(self, items: Sequence[T]) -> None:
        """429 now rather than an answer nobody waits for. Only with work ahead: a lone request
        is never refused on an estimate (it may be worth trying, and nothing else is slowed)."""
        deadline = call_deadline.get()
        if deadline is None or not (self._queued or self._inflight):
            return
        left = deadline - time.monotonic()
        wait = self.expected_wait(sum(self._size_of(item) for item in items), work_priority.get())
        if wait > left:
            metrics.SHED_REQUESTS.labels("queue_wait").inc()
            raise Overloaded(
                f"{self.kind} queue would answer in about {wait * 1000:.0f} ms; the caller "
                f"waits {max(left, 0.0) * 1000:.0f} ms",
                retry_after_s=self.expected_wait(0),
            )

    async def _submit(self, items: Sequence[T]) -> list[R]:
        loop = asyncio.get_running_loop()
        deadline, priority = call_deadline.get(), work_priority.get()
        if priority is Priority.INTERACTIVE:
            self._last_query = time.monotonic()
        entries = [
            _Entry(item, self._size_of(item), loop.create_future(), deadline, priority)
            for item in items
        ]
        for entry in entries:
            entry.request = entries
            entry.future.add_done_callback(partial(self._left, entry))
        self._pending.extend(entries)
        self._queued += len(entries)
        self._queued_tokens[priority] += sum(entry.size for entry in entries)
        self._report_depth()
        self._wakeup.set()
        started = time.perf_counter()
        try:
            results = await asyncio.gather(*(entry.future for entry in entries))
        except BaseException:
            for entry in entries:  # the answer is gone: nobody needs the rest computed
                entry.future.cancel()
            raise
        finally:
            timing = request_timing.get()
            if timing is not None:
                compute = sum({e.batch: e.compute_s for e in entries if e.batch >= 0}.values())
                timing.compute_s += compute
                timing.queue_s += max(0.0, time.perf_counter() - started - compute)
        return list(results)

    def _left(self, entry: _Entry[T, R], _future: asyncio.Future[R]) -> None:
        self._dequeue(entry)

    def _dequeue(self, entry: _Entry[T, R]) -> None:
        """`entry` left the queue: taken into a batch, or done (cancelled) while waiting."""
        if entry.queued:
            entry.queued = False
            self._queued -= 1
            self._queued_tokens[entry.priority] -= entry.size
            self._report_depth()

    def _report_depth(self) -> None:
        metrics.BATCH_QUEUE_DEPTH.labels(self.kind).set(self._queued)

    def _retry_after(self, wanted: int) -> float:
        rate = (self._items_per_s or 100.0) * (self._workers if self._one_at_a_time() else 1)
        return max(1.0, (self._queued + self._reserved + wanted) / rate)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            while self._executing and not self._may_run_beside():  # items gather meanwhile
                await asyncio.wait(self._executing, return_when=asyncio.FIRST_COMPLETED)
            await self._linger()
            batch = self._cut()
            if not self._pending:
                self._wakeup.clear()
            if not batch:
                continue
            number = self._begin(batch)
            task = loop.create_task(self._execute(loop, batch, number), name=f"batch-{self.kind}")
            self._executing.add(task)
            task.add_done_callback(self._executing.discard)

    def _may_run_beside(self) -> bool:
        """Whether the next batch may start while others compute: a worker is free, one
        item waits, and requests come one at a time."""
        return len(self._executing) < self._workers and self._queued == 1 and self._one_at_a_time()

    def _one_at_a_time(self) -> bool:
        """Several workers, and each of the last SIDE_BY_SIDE_AFTER batches held one item."""
        recent = self._recent_sizes
        return self._workers > 1 and len(recent) == recent.maxlen and max(recent) == 1

    def _begin(self, batch: list[_Entry[T, R]]) -> int:
        """Number `batch` and count it as computing, before its task first runs (the next
        batch's decision sees it)."""
        self._started += 1
        self._recent_sizes.append(len(batch))
        # stop() fails these too if it cancels a batch mid-compute (no `finally` clears them)
        self._inflight[self._started] = batch
        tokens = sum(e.size for e in batch)
        self._computing[self._started] = (tokens, batch[0].priority, time.monotonic())
        return self._started

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Entry[T, R]], number: int
    ) -> None:
        started = time.perf_counter()
        for entry in batch:
            metrics.BATCH_QUEUE_SECONDS.labels(self.kind).observe(started - entry.enqueued)
        metrics.BATCH_SIZE.labels(self.kind).observe(len(batch))
        metrics.BATCH_TOKENS.labels(self.kind).observe(max(e.size for e in batch) * len(batch))
        tokens, priority, _ = self._computing[number]  # one class makes a batch
        try:
            worker = min(set(range(self._workers)) - self._busy)
            self._busy.add(worker)
            try:
                results = await loop.run_in_executor(
                    self._executors[worker], self._compute, [e.item for e in batch]
                )
            finally:
                self._busy.discard(worker)
            if len(results) != len(batch):
                raise RuntimeError(f"compute returned {len(results)} results for {len(batch)}")
        except Exception as exc:
            del self._inflight[number], self._computing[number]
            log.error("batch_failed", kind=self.kind, items=len(batch), error=repr(exc))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            # A failed batch fails its requests; their items still queued are not worth a
            # forward pass (cancelled now, before the next batch is cut, and skipped).
            for entry in batch:
                for sibling in entry.request:
                    sibling.future.cancel()
            return
        del self._inflight[number], self._computing[number]
        elapsed = time.perf_counter() - started
        metrics.BATCH_COMPUTE_SECONDS.labels(self.kind).observe(elapsed)
        rate = len(batch) / elapsed if elapsed > 0 else 0.0
        self._items_per_s = rate if not self._items_per_s else 0.8 * self._items_per_s + 0.2 * rate
        self._cost[priority].observe(tokens, elapsed)
        self._batches += 1
        for entry, result in zip(batch, results, strict=True):
            entry.batch, entry.compute_s = self._batches, elapsed
            if not entry.future.done():
                entry.future.set_result(result)

    async def _linger(self) -> None:
        """Wait for companions until the oldest item has waited `max_wait_s` or a batch is full,
        but only when items of more than one request wait: that is concurrent traffic, where
        more may be a moment away. A request alone runs at once (as TEI and Triton do when
        idle): whoever comes while it computes forms the next batch, so waiting would only
        add to its latency.

        Items that queued while the previous batch computed have waited already: no extra wait.
        """
        live = [e for e in self._pending if not e.future.done()]
        if not live or len(live) >= self.limits.max_batch_size:
            return
        if all(entry.request is live[0].request for entry in live):
            return
        remaining = self.limits.max_wait_s - (time.perf_counter() - live[0].enqueued)
        if remaining > 0:
            await asyncio.sleep(remaining)

    def _cut(self) -> list[_Entry[T, R]]:
        """The next batch: the oldest live item plus the items closest to it in length,
        within the item and padded-token limits. The oldest always goes first, so a long item
        cannot be starved by a stream of short ones."""
        now = time.monotonic()
        for entry in self._pending:
            if entry.deadline is not None and entry.deadline <= now and not entry.future.done():
                entry.future.set_exception(
                    DeadlineExceeded(f"the caller's deadline passed in the {self.kind} queue")
                )
        live = [e for e in self._pending if not e.future.done()]
        if not live:
            self._pending = []
            return []
        # One class makes a batch (app.models.priority): the more urgent one, except that
        # when both wait they take turns, so steady queries cannot starve the bulk work.
        waiting = {e.priority for e in live}
        urgent = min(waiting)
        if len(waiting) > 1 and self._last_priority == urgent:
            urgent = max(waiting)
        self._last_priority = urgent
        eligible = [e for e in live if e.priority == urgent]
        anchor = eligible[0]
        by_length = sorted(eligible, key=lambda e: e.size)
        at = next(i for i, e in enumerate(by_length) if e is anchor)
        batch = [anchor]
        longest = anchor.size
        lo, hi = at - 1, at + 1
        budget = self.limits.max_batch_tokens
        if urgent is Priority.BULK:
            budget = max(self._bulk_batch_tokens, anchor.size)
        while len(batch) < self.limits.max_batch_size and (lo >= 0 or hi < len(by_length)):
            take_lo = hi >= len(by_length) or (
                lo >= 0 and anchor.size - by_length[lo].size <= by_length[hi].size - anchor.size
            )
            candidate = by_length[lo] if take_lo else by_length[hi]
            if max(longest, candidate.size) * (len(batch) + 1) > budget:
                break
            batch.append(candidate)
            longest = max(longest, candidate.size)
            if take_lo:
                lo -= 1
            else:
                hi += 1
        chosen = set(map(id, batch))
        self._pending = [e for e in live if id(e) not in chosen]
        for entry in batch:
            self._dequeue(entry)
        return batch
