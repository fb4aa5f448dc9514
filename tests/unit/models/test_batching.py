"""BatchQueue: order, cuts by size/tokens/wait, length grouping, overload, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app import metrics
from app.errors import DeadlineExceeded, Overloaded, Unavailable
from app.models import batch_limits
from app.models.batch_limits import BatchLimits, resolve_batch_tokens, resolve_workers
from app.models.batching import SIDE_BY_SIDE_AFTER, BatchQueue
from app.models.priority import Priority
from app.models.timing import RequestTiming, request_timing
from app.resilience import call_deadline


class Recorder:
    """compute(): doubles each item and records the batches it saw; can be held back."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.seconds = 0.0  # compute time of each batch

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(5)
        time.sleep(self.seconds)
        self.batches.append(list(items))
        return [2 * i for i in items]


@pytest.fixture
async def make_queue() -> AsyncIterator[Callable[..., tuple[BatchQueue[int, int], Recorder]]]:
    executor = ThreadPoolExecutor(1)
    queues: list[BatchQueue[int, int]] = []

    def make(
        size_of: Callable[[int], int] = lambda i: 1, **limits: float
    ) -> tuple[BatchQueue[int, int], Recorder]:
        recorder = Recorder()
        queue: BatchQueue[int, int] = BatchQueue(
            recorder,
            size_of=size_of,
            executors=[executor],
            limits=BatchLimits(
                **{  # type: ignore[arg-type]
                    "max_batch_size": 256,
                    "max_batch_tokens": 16_384,
                    "max_wait_s": 0.01,
                    "max_queued_items": 4096,
                    **limits,
                }
            ),
            kind="test",
        )
        queue.start()
        queues.append(queue)
        return queue, recorder

    yield make
    for queue in queues:
        await queue.stop()
    executor.shutdown()


async def test_results_come_back_in_order_per_request(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue()
    results = await asyncio.gather(*(queue.submit([i, i + 100, i + 200]) for i in range(20)))
    assert results == [[2 * i, 2 * (i + 100), 2 * (i + 200)] for i in range(20)]
    assert sum(map(len, recorder.batches)) == 60
    assert len(recorder.batches) < 20  # concurrent requests shared batches


async def test_batches_are_cut_by_item_count(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=4)
    await queue.submit(list(range(10)))
    assert [len(b) for b in recorder.batches] == [4, 4, 2]


async def test_batches_are_cut_by_padded_tokens(make_queue) -> None:  # type: ignore[no-untyped-def]
    # item i costs i tokens; a batch costs longest x count, at most 100
    queue, recorder = make_queue(size_of=lambda i: i, max_batch_tokens=100)
    await queue.submit([10, 10, 10, 50, 50, 90])
    for batch in recorder.batches:
        assert max(batch) * len(batch) <= 100
    assert sorted(x for b in recorder.batches for x in b) == [10, 10, 10, 50, 50, 90]


async def test_an_item_over_the_budget_still_runs_alone(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(size_of=lambda i: i, max_batch_tokens=100)
    assert await queue.submit([500]) == [1000]
    assert recorder.batches == [[500]]


async def test_similar_lengths_are_grouped(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(size_of=lambda i: i, max_batch_size=3, max_batch_tokens=10_000)
    recorder.gate.clear()  # hold the first batch so the rest queue up together
    first = asyncio.ensure_future(queue.submit([1]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    rest = asyncio.ensure_future(queue.submit([5, 300, 6, 310, 7, 320]))
    await asyncio.sleep(0.05)
    recorder.gate.set()
    await asyncio.gather(first, rest)
    assert recorder.batches[1:] == [[5, 6, 7], [300, 310, 320]]


async def test_the_oldest_item_is_never_starved(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(size_of=lambda i: i, max_batch_size=2, max_batch_tokens=10_000)
    recorder.gate.clear()
    blocker = asyncio.ensure_future(queue.submit([1]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    old = asyncio.ensure_future(queue.submit([500]))
    await asyncio.sleep(0.01)
    short = [asyncio.ensure_future(queue.submit([2])) for _ in range(6)]
    await asyncio.sleep(0.05)
    recorder.gate.set()
    await asyncio.gather(blocker, old, *short)
    assert 500 in recorder.batches[1]


async def test_full_queue_refuses_at_once_with_retry_after(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_queued_items=5, max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = asyncio.ensure_future(queue.submit([1, 2, 3, 4]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as raised:
        await queue.submit([5, 6])
    assert raised.value.retry_after_s >= 1
    assert queue.depth == 4  # the refused items were never queued
    recorder.gate.set()
    assert await waiting == [2, 4, 6, 8]
    await running


async def test_cancelled_items_are_dropped_before_compute(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    abandoned = asyncio.ensure_future(queue.submit([7, 8, 9]))
    await asyncio.sleep(0.01)
    abandoned.cancel()  # e.g. the client disconnected
    kept = asyncio.ensure_future(queue.submit([3]))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await kept == [6]
    await running
    computed = [x for batch in recorder.batches for x in batch]
    assert computed == [0, 3]


async def test_cancelled_items_stop_counting_toward_the_bound(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_queued_items=10, max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    abandoned = asyncio.ensure_future(queue.submit(list(range(100, 110))))  # fills the queue
    await asyncio.sleep(0.01)
    assert queue.depth == 10
    abandoned.cancel()  # the client went away; its items wait in the list until the next cut
    await asyncio.sleep(0.01)
    assert queue.depth == 0
    assert metrics.BATCH_QUEUE_DEPTH.labels("test")._value.get() == 0
    kept = asyncio.ensure_future(queue.submit([1]))  # not refused: nothing live is waiting
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await kept == [2]
    await running


async def test_a_failing_batch_fails_its_requests_only(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue()
    original = recorder.__call__

    calls = {"n": 0}

    def flaky(items: list[int]) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return original(items)

    queue._compute = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        await queue.submit([1])
    assert await queue.submit([2]) == [4]


async def test_a_failed_batch_cancels_the_rest_of_its_request(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=2)
    original = recorder.__call__

    def failing_on_zero(items: list[int]) -> list[int]:
        if 0 in items:
            raise RuntimeError("boom")
        return original(items)

    queue._compute = failing_on_zero  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        await queue.submit([0, 1, 2, 3, 4, 5])
    assert await queue.submit([7]) == [14]
    assert recorder.batches == [[7]]  # 2..5 were dropped, never computed
    assert queue.depth == 0


async def test_request_timing_splits_queue_and_compute(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_wait_s=0.02)
    recorder.gate.clear()  # hold a first request on the model; ours queues behind it
    first = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    timing = RequestTiming()
    token = request_timing.set(timing)
    try:
        ours = asyncio.ensure_future(queue.submit([1, 2]))
        await asyncio.sleep(0.03)
        recorder.gate.set()
        await ours
    finally:
        request_timing.reset(token)
    await first
    assert timing.compute_s > 0
    assert timing.queue_s >= 0.025  # it waited for the batch ahead of it


async def test_a_request_alone_does_not_wait_for_companions(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_wait_s=5.0)
    started = time.perf_counter()
    assert await queue.submit([1, 2]) == [2, 4]
    assert time.perf_counter() - started < 1.0  # not the 5 s max wait
    assert recorder.batches == [[1, 2]]


async def test_concurrent_requests_wait_for_each_other_while_the_model_is_idle(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_wait_s=0.2)
    first = asyncio.ensure_future(queue.submit([1]))
    second = asyncio.ensure_future(queue.submit([2]))
    await asyncio.sleep(0.05)  # within the max wait: a third still joins them
    third = asyncio.ensure_future(queue.submit([3]))
    assert await asyncio.gather(first, second, third) == [[2], [4], [6]]
    assert recorder.batches == [[1, 2, 3]]


async def test_stopped_queue_fails_waiting_and_new_requests(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.01)
    await queue.stop()
    recorder.gate.set()
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await queue.submit([2])
    running.cancel()


async def test_stop_fails_the_batch_being_computed(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    await queue.stop()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(running, 2)
    recorder.gate.set()


async def test_a_request_larger_than_the_queue_runs_when_nothing_waits(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_queued_items=4, max_batch_size=3)
    depths: list[int] = []
    original = recorder.__call__

    def watching(items: list[int]) -> list[int]:
        depths.append(queue.depth)
        return original(items)

    queue._compute = watching  # type: ignore[method-assign]
    assert await queue.submit(list(range(11))) == [2 * i for i in range(11)]
    assert max(depths) <= 4  # fed in pieces that fit: the queue stays bounded

    recorder.gate.clear()
    recorder.entered.clear()
    big = asyncio.ensure_future(queue.submit(list(range(100, 109))))
    await asyncio.to_thread(recorder.entered.wait, 5)
    with pytest.raises(Overloaded):  # its remaining items hold their place
        await queue.submit([1])
    recorder.gate.set()
    assert await big == [2 * i for i in range(100, 109)]

    recorder.gate.clear()
    recorder.entered.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    waiting = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):  # admitted only when nothing else waits
        await queue.submit(list(range(5)))
    recorder.gate.set()
    await asyncio.gather(running, waiting)


def test_token_budget_defaults_by_device_and_an_explicit_one_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batch_limits, "cpu_has_bf16", lambda: False)
    assert resolve_batch_tokens(0, "cpu") == 4_096
    assert resolve_batch_tokens(0, "cuda:0") == 16_384
    assert resolve_batch_tokens(8_192, "cpu") == 8_192
    monkeypatch.setattr(batch_limits, "cpu_has_bf16", lambda: True)  # large batches in bf16
    assert resolve_batch_tokens(0, "cpu") == 8_192
    assert resolve_batch_tokens(2_048, "cpu") == 2_048


async def test_bulk_items_wait_while_interactive_ones_do(make_queue) -> None:  # type: ignore[no-untyped-def]
    """Passages of writes (bulk) queued first; a query (interactive) arriving later still goes
    into the next batch, alone; bulk batches take a quarter of the token budget."""
    from app.models.priority import bulk_work

    queue, recorder = make_queue(size_of=lambda i: 10, max_batch_tokens=80)
    recorder.gate.clear()
    with bulk_work():  # a bulk batch computing, more passages queued behind it
        blocker = asyncio.ensure_future(queue.submit([0]))
        await asyncio.to_thread(recorder.entered.wait, 5)
        passages = asyncio.ensure_future(queue.submit(list(range(100, 108))))
    await asyncio.sleep(0.01)
    query = asyncio.ensure_future(queue.submit([7]))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await query == [14]
    assert await passages == [2 * i for i in range(100, 108)]
    await blocker
    assert recorder.batches[1] == [7]  # the query jumped the queue of passages
    assert recorder.batches[2:] == [[100, 101], [102, 103], [104, 105], [106, 107]]


async def test_queries_and_bulk_work_take_turns_when_both_wait(make_queue) -> None:  # type: ignore[no-untyped-def]
    """Steady queries must not starve indexing: with both classes waiting, batches alternate."""
    from app.models.priority import bulk_work

    queue, recorder = make_queue(size_of=lambda i: 10, max_batch_tokens=80, max_batch_size=2)
    recorder.gate.clear()
    blocker = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    with bulk_work():
        passages = asyncio.ensure_future(queue.submit([100, 101, 102, 103]))
    await asyncio.sleep(0.01)
    queries = asyncio.ensure_future(queue.submit([1, 2, 3, 4]))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    await asyncio.gather(blocker, passages, queries)
    # after the blocker (a query batch), the passages' turn, then the queries', ...
    assert recorder.batches[1:] == [[100, 101], [1, 2], [102, 103], [3, 4]]


async def submit_within(queue: BatchQueue[int, int], items: list[int], seconds: float) -> list[int]:
    """`queue.submit(items)` by a caller who waits `seconds` (as the services set it from the
    request's timeout header)."""
    call_deadline.set(time.monotonic() + seconds)  # this task's context only
    return await queue.submit(items)


async def test_a_request_the_queue_would_answer_too_late_is_refused_at_once(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=1, size_of=lambda i: 10)
    recorder.seconds = 0.05
    assert await queue.submit([0]) == [0]  # measured: 50 ms for 10 tokens
    assert queue.expected_wait(10) == pytest.approx(0.05, rel=0.5)
    recorder.gate.clear()
    recorder.entered.clear()
    running = asyncio.ensure_future(queue.submit([1]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    queued = asyncio.ensure_future(queue.submit([2, 3]))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(Overloaded, match="would answer in about") as refused:
        await submit_within(queue, [4], 0.1)  # ~150 ms of work ahead and 50 of its own
    assert time.monotonic() - started < 0.05
    assert refused.value.retry_after_s > 0.1
    assert queue.depth == 2  # never queued
    patient = asyncio.ensure_future(submit_within(queue, [5], 5.0))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await patient == [10]
    assert await queued == [4, 6]
    await running


async def test_a_lone_request_is_never_refused_on_an_estimate(make_queue) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(size_of=lambda i: 10, max_wait_s=0.0)
    recorder.seconds = 0.05
    await queue.submit([0])
    # its own 50 ms exceed its 30 ms, but nothing waits ahead: it may be worth trying
    assert await submit_within(queue, [1], 0.03) == [2]


async def test_items_whose_deadline_passed_while_queued_are_dropped_before_compute(
    make_queue,
) -> None:  # type: ignore[no-untyped-def]
    queue, recorder = make_queue(max_batch_size=1)
    recorder.gate.clear()
    running = asyncio.ensure_future(queue.submit([0]))
    await asyncio.to_thread(recorder.entered.wait, 5)
    late = asyncio.ensure_future(submit_within(queue, [7], 0.02))
    await asyncio.sleep(0.05)  # its caller stopped waiting meanwhile
    recorder.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    await running
    assert [x for batch in recorder.batches for x in batch] == [0]


async def test_queued_bulk_work_does_not_count_against_a_query_deadline(make_queue) -> None:  # type: ignore[no-untyped-def]
    """A query waits behind queries and one bulk batch at most: a long queue of passages must
    not get it refused on an estimate."""
    from app.models.priority import bulk_work

    queue, recorder = make_queue(max_batch_size=1, size_of=lambda i: 10, max_batch_tokens=80)
    recorder.seconds = 0.05
    await queue.submit([0])  # measured: 50 ms for 10 tokens, of queries
    with bulk_work():
        await queue.submit([99])  # and of passages
    recorder.gate.clear()
    recorder.entered.clear()
    with bulk_work():
        running = asyncio.ensure_future(queue.submit([1]))
        await asyncio.to_thread(recorder.entered.wait, 5)
        backlog = asyncio.ensure_future(queue.submit(list(range(100, 120))))  # ~1 s of work
        await asyncio.sleep(0.01)
        assert queue.expected_wait(10, Priority.BULK) > 0.9
    query = asyncio.ensure_future(submit_within(queue, [7], 0.5))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await query == [14]
    assert await backlog == [2 * i for i in range(100, 120)]
    assert recorder.batches[2] == [1] and recorder.batches[3] == [7]  # one bulk batch, then it
    await running


async def test_a_query_is_not_refused_for_bulk_work_priced_at_a_query_rate(make_queue) -> None:  # type: ignore[no-untyped-def]
    """Writes over HTTP got every search refused: the queue priced a bulk batch of passages at
    the per-token rate of lone queries (mostly fixed cost), 10x too high. With the cost fit as
    fixed + per token, a query that waits for one bulk batch is admitted when it fits."""
    from app.models.priority import bulk_work

    def size_of(item: int) -> int:
        return 100 if item >= 100 else 2  # passages of 100 tokens, queries of 2

    queue, recorder = make_queue(size_of=size_of, max_batch_tokens=800, max_batch_size=8)

    def costed(items: list[int]) -> list[int]:  # 20 ms fixed + 0.1 ms a token
        time.sleep(0.02 + 0.0001 * sum(map(size_of, items)))
        return Recorder.__call__(recorder, items)

    queue._compute = costed
    await queue.submit([1])  # a lone query: 20 ms for 2 tokens, 10 ms a token
    with bulk_work():
        await queue.submit([100, 101])  # one bulk batch: 40 ms for 200 tokens
    assert queue._cost[Priority.BULK].seconds(200) == pytest.approx(0.04, rel=0.2)
    recorder.gate.clear()
    recorder.entered.clear()
    with bulk_work():
        backlog = asyncio.ensure_future(queue.submit(list(range(100, 140))))
        await asyncio.to_thread(recorder.entered.wait, 5)
    # a bulk batch of 200 tokens computes, 38 passages wait; the query waits ~80 ms at most
    # (it was priced at 2 s by 10 ms a token)
    assert queue.expected_wait(2) < 0.2
    query = asyncio.ensure_future(submit_within(queue, [3], 0.3))
    await asyncio.sleep(0.01)
    recorder.gate.set()
    assert await query == [6]
    await backlog


async def test_bulk_batches_are_cut_to_a_short_time_while_searches_come(make_queue) -> None:  # type: ignore[no-untyped-def]
    """A query waits for at most one bulk batch: while queries come, on a slow device that
    batch is cut by time (BULK_BATCH_S) by its measured cost, not only by its share of the
    token budget. With no query in the last QUERIES_RECENT_S, nobody waits: the share."""
    from app.models.priority import BULK_BATCH_S, bulk_work

    queue, recorder = make_queue(size_of=lambda i: 100, max_batch_tokens=4000)
    recorder.seconds = 0.9 * BULK_BATCH_S  # a batch takes most of the target...
    await queue.submit([0])  # a query: searches are coming
    with bulk_work():
        await queue.submit([1, 2])  # ...measured with 200 tokens: 2 items fit, 3 do not
        assert 200 <= queue._bulk_batch_tokens < 300
        await queue.submit(list(range(100, 106)))
        # by the token share alone (1,000 tokens), all six would have made one batch
        assert [len(b) for b in recorder.batches[2:]] == [2, 2, 2]
        queue._last_query -= 60  # the last query came a minute ago
        recorder.batches.clear()
        await queue.submit(list(range(200, 206)))
    assert [len(b) for b in recorder.batches] == [6]


def test_workers_resolve_to_two_for_torch_on_a_cpu_with_two_threads_else_one() -> None:
    torch = "sentence-transformers"
    assert resolve_workers(0, "cpu", torch, 2) == 2
    assert resolve_workers(0, "cpu", torch, 1) == 1
    assert resolve_workers(0, "cuda:0", torch, 8) == 1
    assert resolve_workers(0, "cpu", "onnx", 2) == 1
    assert resolve_workers(3, "cuda:0", torch, 8) == 3


@pytest.fixture
async def two_workers() -> AsyncIterator[Callable[..., BatchQueue[int, int]]]:
    """Queues with two workers (and an executor of two threads), over `compute`."""
    executors = [ThreadPoolExecutor(1), ThreadPoolExecutor(1)]
    queues: list[BatchQueue[int, int]] = []

    def make(
        compute: Callable[[list[int]], list[int]], size_of: Callable[[int], int] = lambda i: 1
    ) -> BatchQueue[int, int]:
        limits = BatchLimits(
            max_batch_size=256,
            max_batch_tokens=16_384,
            max_wait_s=0.0,
            max_queued_items=4096,
        )
        queue: BatchQueue[int, int] = BatchQueue(
            compute, size_of=size_of, executors=executors, limits=limits, kind="test"
        )
        queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.stop()
    for executor in executors:
        executor.shutdown()


class Held:
    """compute() for two workers: records each batch and its thread, and waits at `gate`
    (set by the test); `entered` counts the batches that began."""

    def __init__(self) -> None:
        self.gate, self.entered = threading.Event(), threading.Semaphore(0)
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.entered.release()
        self.gate.wait(5)
        self.batches.append(items)
        self.threads.add(threading.current_thread().name)
        return [2 * i for i in items]


async def test_two_workers_compute_small_batches_side_by_side(two_workers) -> None:  # type: ignore[no-untyped-def]
    together = threading.Barrier(2, timeout=5)  # broken unless both batches are inside at once
    batches: list[list[int]] = []

    def compute(items: list[int]) -> list[int]:
        together.wait()
        batches.append(items)
        return [2 * i for i in items]

    queue = two_workers(compute)
    queue._recent_sizes.extend([1] * SIDE_BY_SIDE_AFTER)  # queries have come one at a time
    first = asyncio.ensure_future(queue.submit([1]))
    await asyncio.sleep(0.05)  # the first batch is computing when the second request comes
    assert await asyncio.gather(first, queue.submit([2])) == [[2], [4]]
    assert sorted(batches) == [[1], [2]]


async def test_two_workers_merge_overlapping_requests_instead(two_workers) -> None:  # type: ignore[no-untyped-def]
    held = Held()
    queue = two_workers(held)
    queue._recent_sizes.extend([1] * (SIDE_BY_SIDE_AFTER - 1) + [3])  # a batch of three lately
    first = asyncio.ensure_future(queue.submit([1]))
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    later = asyncio.ensure_future(queue.submit([2]))
    await asyncio.sleep(0.1)
    assert not await asyncio.to_thread(held.entered.acquire, timeout=0.2)  # no second batch began
    more = asyncio.ensure_future(queue.submit([3]))
    await asyncio.sleep(0.05)
    held.gate.set()
    assert (await first, await later, await more) == ([2], [4], [6])
    assert held.batches == [[1], [2, 3]]  # what waited beside the first batch went as one
    assert len(held.threads) == 1  # one after the other, on the first worker


async def test_stop_fails_every_batch_computing(two_workers) -> None:  # type: ignore[no-untyped-def]
    held = Held()
    queue = two_workers(held)
    queue._recent_sizes.extend([1] * SIDE_BY_SIDE_AFTER)
    waiting = [asyncio.ensure_future(queue.submit([0]))]
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    waiting.append(asyncio.ensure_future(queue.submit([1])))
    held.entered.release()  # counted once more below
    for _ in range(2):
        assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    await queue.stop()
    held.gate.set()
    for request in waiting:
        with pytest.raises(Unavailable):
            await request


async def test_a_free_worker_means_no_wait_for_the_batch_computing(two_workers) -> None:  # type: ignore[no-untyped-def]
    held = Held()
    queue = two_workers(held)
    queue._recent_sizes.extend([1] * SIDE_BY_SIDE_AFTER)
    queue._cost[Priority.INTERACTIVE].observe(1, 2.0)  # a query's batch seems to take 2 s
    first = asyncio.ensure_future(queue.submit([1]))
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    one_free = queue.expected_wait(1)
    second = asyncio.ensure_future(queue.submit([2]))
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    none_free = queue.expected_wait(1)
    held.gate.set()
    await asyncio.gather(first, second)
    assert one_free == pytest.approx(2.0, abs=0.2)  # its own batch only
    assert none_free == pytest.approx(4.0, abs=0.3)  # the first worker's rest, then its batch


async def test_two_items_waiting_do_not_start_beside_a_batch(two_workers) -> None:  # type: ignore[no-untyped-def]
    held = Held()
    queue = two_workers(held)
    queue._recent_sizes.extend([1] * SIDE_BY_SIDE_AFTER)  # one at a time so far
    first = asyncio.ensure_future(queue.submit([1]))
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    both = asyncio.ensure_future(asyncio.gather(queue.submit([2]), queue.submit([3])))
    assert not await asyncio.to_thread(held.entered.acquire, timeout=0.3)  # two wait: merged
    held.gate.set()
    await asyncio.gather(first, both)
    assert held.batches == [[1], [2, 3]]


async def test_a_busy_queue_is_priced_as_one_worker(two_workers) -> None:  # type: ignore[no-untyped-def]
    held = Held()
    queue = two_workers(held)
    queue._recent_sizes.extend([1] * (SIDE_BY_SIDE_AFTER - 1) + [2])  # requests overlapped
    queue._cost[Priority.INTERACTIVE].observe(1, 2.0)  # a query's batch seems to take 2 s
    first = asyncio.ensure_future(queue.submit([1]))
    assert await asyncio.to_thread(held.entered.acquire, timeout=5)
    waiting = asyncio.ensure_future(queue.submit([2]))
    await asyncio.sleep(0.05)
    busy = queue.expected_wait(1)
    retry_after = queue._retry_after(1)
    held.gate.set()
    await asyncio.gather(first, waiting)
    # the batch computing, then the query waiting, then this one: nothing runs beside
    assert busy == pytest.approx(6.0, abs=0.3)
    assert retry_after == pytest.approx(max(1.0, 3 / 100.0))  # no rate doubled by workers
