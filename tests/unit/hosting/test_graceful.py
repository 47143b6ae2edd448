"""The graceful stop of a StageRunner and of `run_stages`' tasks, over a real SQLite queue:
handlers in flight finish within the grace; what is still running then is cancelled and its
message released at once (not hidden until its visibility timeout), its receive given back;
what a long poll returns after the stop goes back too."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from wacloud.adapters.queue.base import QueueSpec, ReceivedMessage
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.hosting import shutdown
from wacloud.hosting.runner import StageRunner
from wacloud.stages.envelopes import Output


async def test_a_handler_finishing_within_the_grace_is_acked(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=300))
    await queue.send(b"slow")
    started = asyncio.Event()

    async def handler(message: ReceivedMessage) -> list[Output]:
        started.set()
        await asyncio.sleep(0.3)  # work in flight at the stop
        return []

    runner = StageRunner("t", queue, handler, {}, wait_seconds=0.05, shutdown_grace=5)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    await broker.close()


async def test_a_handler_outliving_the_grace_is_cancelled_and_its_message_released_now(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=300))
    await queue.send(b"stuck")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(message: ReceivedMessage) -> list[Output]:
        started.set()
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return []

    runner = StageRunner("t", queue, handler, {}, wait_seconds=0.05, shutdown_grace=0.3)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stopped = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert cancelled.is_set()
    assert time.monotonic() - stopped < 3
    # Visible again at once, for another process, and the interrupted receive not counted.
    assert (await queue.depth())["in_flight"] == 0
    [again] = await queue.receive(1)
    assert again.body == b"stuck" and again.receive_count == 1
    await broker.close()


async def test_messages_a_long_poll_returns_after_the_stop_go_back(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=300))
    handled: list[bytes] = []

    async def handler(message: ReceivedMessage) -> list[Output]:
        handled.append(message.body)
        return []

    runner = StageRunner("t", queue, handler, {}, wait_seconds=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.sleep(0.2)  # the runner is in its long poll (a period, not a sync)
    stop.set()
    await queue.send(b"late")  # wakes the poll, which returns it after the stop
    await asyncio.wait_for(task, 10)
    assert handled == []
    assert await queue.depth() == {"visible": 1, "in_flight": 0, "delayed": 0, "dead": 0}
    [again] = await queue.receive(1)
    assert again.receive_count == 1
    await broker.close()


async def test_tasks_ignoring_the_stop_are_cancelled_after_the_grace(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutdown, "MARGIN_S", 0.0)
    stop = asyncio.Event()

    async def polite() -> None:
        await stop.wait()

    async def stubborn() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(polite()), asyncio.create_task(stubborn())]
    waiting = asyncio.create_task(shutdown.wait_stopping(tasks, stop, 0.2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    stop.set()
    await asyncio.wait_for(waiting, 5)
    assert tasks[0].done() and not tasks[0].cancelled()
    assert tasks[1].cancelled()


async def test_a_task_failing_before_the_stop_is_raised() -> None:
    stop = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("boom")

    async def polite() -> None:
        await stop.wait()

    polite_task = asyncio.create_task(polite())
    with pytest.raises(RuntimeError, match="boom"):
        await shutdown.wait_stopping([asyncio.create_task(broken()), polite_task], stop, 1)
    polite_task.cancel()


async def test_a_runner_cancelled_past_the_deadline_still_releases_what_it_holds(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=300))
    await queue.send(b"stuck")
    started = asyncio.Event()

    async def handler(message: ReceivedMessage) -> list[Output]:
        started.set()
        await asyncio.Event().wait()
        return []

    runner = StageRunner("t", queue, handler, {}, wait_seconds=0.05, shutdown_grace=300)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.sleep(0.2)  # the runner waits for its handler within its (long) grace
    task.cancel()  # what `wait_stopping` does past the process's deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await queue.depth() == {"visible": 1, "in_flight": 0, "delayed": 0, "dead": 0}
    await broker.close()
