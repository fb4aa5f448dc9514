"""ThreadShare: torch's CPU threads split between batches computing at once."""

from __future__ import annotations

import threading

import torch

from app.models.engines import ThreadShare


def test_a_batch_alone_gets_every_thread_and_two_at_once_get_half_each() -> None:
    share = ThreadShare(2)
    seen: dict[str, int] = {}
    first_in, second_done = threading.Event(), threading.Event()

    def first() -> None:
        with share.share():
            seen["first"] = torch.get_num_threads()
            first_in.set()
            second_done.wait(5)

    def second() -> None:
        first_in.wait(5)
        with share.share():
            seen["second"] = torch.get_num_threads()
        second_done.set()

    def alone() -> None:
        with share.share():
            seen["alone"] = torch.get_num_threads()

    for group in ([first, second], [alone]):
        threads = [threading.Thread(target=f) for f in group]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert seen == {"first": 2, "second": 1, "alone": 2}


def test_zero_leaves_the_thread_count_alone() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadShare(0).share():
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
