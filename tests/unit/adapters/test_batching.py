"""BatchingThread: batches of whatever waits, and the linger that lets a burst gather."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from wacloud.adapters.batching import BatchingThread


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> float:
    """Poll until `condition()`; the seconds it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.001)
    return time.monotonic() - started


def test_a_small_batch_after_a_big_one_lingers_for_more() -> None:
    batches: list[list[str]] = []
    release = threading.Event()

    def process(batch: list[str]) -> None:
        batches.append(batch)
        release.wait()

    worker: BatchingThread[str] = BatchingThread(process, "test-batching", linger=0.5)
    worker.submit("a", "closed")
    wait_for(lambda: batches)
    for i in range(100):  # submitted while the first batch is processed: one batch of 100
        worker.submit(f"x{i}", "closed")
    release.set()
    wait_for(lambda: len(batches) == 2)
    worker.submit("b", "closed")  # alone, far below the last batch: nothing comes, it lingers
    assert wait_for(lambda: len(batches) == 3) >= 0.4
    worker.close()
    assert [len(b) for b in batches] == [1, 100, 1]


def test_batches_as_large_as_recent_ones_and_closing_do_not_linger() -> None:
    batches: list[list[str]] = []
    worker: BatchingThread[str] = BatchingThread(batches.append, "test-batching", linger=30.0)
    worker.submit("first", "closed")  # nothing larger seen yet: taken at once
    assert wait_for(lambda: batches) < 10
    worker.submit("second", "closed")  # the same size as the last batch: taken at once
    assert wait_for(lambda: len(batches) == 2) < 10
    worker._largest = 100.0  # as after a burst: a batch of one would linger 30 s ...
    worker.submit("third", "closed")
    started = time.monotonic()
    worker.close()  # ... but closing takes it at once
    assert time.monotonic() - started < 10
    assert batches == [["first"], ["second"], ["third"]]
