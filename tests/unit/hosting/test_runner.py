"""StageRunner over a real SQLite queue: batches, the one-by-one fallback, FIFO order."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy.exc as sa_exc

from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.hosting.runner import StageRunner
from wacloud.stages.envelopes import Output


async def run_until(runner: StageRunner, done: Callable[[], bool], timeout: float = 10) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert done(), "the runner did not finish in time"


async def test_a_receive_is_handled_in_one_batch_call(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in"))
    for i in range(20):
        await queue.send(f"m{i}".encode())
    calls: list[list[bytes]] = []

    async def batch(messages: list[ReceivedMessage]) -> list[Output]:
        calls.append([m.body for m in messages])
        return []

    async def one(message: ReceivedMessage) -> list[Output]:
        raise AssertionError("the single handler must not run when the batch succeeds")

    runner = StageRunner("t", queue, one, {}, concurrency=2, batch=50, wait_seconds=0.05,
                         batch_handler=batch)
    await run_until(runner, lambda: sum(map(len, calls)) == 20)
    assert len(calls) == 1 and sorted(calls[0]) == sorted(f"m{i}".encode() for i in range(20))
    assert (await queue.depth())["visible"] == 0 and (await queue.depth())["in_flight"] == 0
    await broker.close()


async def test_a_failed_batch_is_retried_one_by_one_and_only_the_bad_one_stays(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=60))
    for body in (b"good-1", b"bad", b"good-2"):
        await queue.send(body)
    handled: list[bytes] = []

    async def one(message: ReceivedMessage) -> list[Output]:
        if message.body == b"bad":
            raise ValueError("poison")
        handled.append(message.body)
        return []

    async def batch(messages: list[ReceivedMessage]) -> list[Output]:
        for message in messages:
            await one(message)
        return []

    runner = StageRunner("t", queue, one, {}, concurrency=1, batch=10, wait_seconds=0.05,
                         error_backoff=30, batch_handler=batch)
    await run_until(runner, lambda: b"good-2" in handled)
    depth = await queue.depth()
    assert depth["visible"] == 0 and depth["in_flight"] == 0
    assert depth["delayed"] == 1  # the poison message, released with backoff, not acked
    await broker.close()


async def test_a_deferring_stage_runs_one_at_a_time_while_its_priority_queue_waits(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    media = broker.queue(QueueSpec("media"))
    rows = broker.queue(QueueSpec("rows"))
    for i in range(6):
        await media.send(f"m{i}".encode())
    await rows.send(b"a burst of rows")
    running = 0
    most = 0
    handled: list[bytes] = []

    async def copy(message: ReceivedMessage) -> list[Output]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)  # stands in for a download: lets others start if allowed
        running -= 1
        handled.append(message.body)
        return []

    runner = StageRunner("media", media, copy, {}, concurrency=4, wait_seconds=0.05,
                         defer_to=rows, deferred_concurrency=1, defer_after=0.0)
    await run_until(runner, lambda: len(handled) >= 3)
    assert most == 1, "copies ran side by side while rows were waiting"

    # Rows that have not waited long (their stage keeps up) do not hold copies back.
    await media.send(b"m-extra-1")
    await media.send(b"m-extra-2")
    most = 0
    runner = StageRunner("media", media, copy, {}, concurrency=4, wait_seconds=0.05,
                         defer_to=rows, deferred_concurrency=1, defer_after=60.0)
    await run_until(runner, lambda: len(handled) == 8)
    assert most > 1

    # Once the rows are taken, the stage goes back to its full concurrency.
    for i in range(3):
        await media.send(f"m-late-{i}".encode())
    for received in await rows.receive(10):
        await rows.ack([received.receipt])
    most = 0
    runner = StageRunner("media", media, copy, {}, concurrency=4, wait_seconds=0.05,
                         defer_to=rows, deferred_concurrency=1, defer_after=0.0)
    await run_until(runner, lambda: len(handled) == 11)
    assert most > 1
    await broker.close()


async def test_a_handler_that_outlives_the_visibility_timeout_keeps_its_messages(
        tmp_path: Path) -> None:
    # Two runners (as two processes would) on one FIFO queue whose visibility is 0.3 s; the
    # first message's handler takes 1.2 s (a slow provider, a long rate-limit wait).
    brokers = [SqliteBroker(tmp_path / "q.db"), SqliteBroker(tmp_path / "q.db")]
    queues = [b.queue(QueueSpec("send", fifo=True, visibility_timeout=0.3)) for b in brokers]
    await queues[0].send_batch([OutgoingMessage(b"g1", group_id="t/n/g"),
                                OutgoingMessage(b"g2", group_id="t/n/g")])
    handled: list[tuple[str, bytes]] = []

    def handler(name: str) -> Callable[[ReceivedMessage], Awaitable[list[Output]]]:
        async def handle(message: ReceivedMessage) -> list[Output]:
            handled.append((name, message.body))
            if message.body == b"g1":
                await asyncio.sleep(1.2)  # stands in for the slow work
            return []
        return handle

    first = StageRunner("a", queues[0], handler("a"), {}, concurrency=4, wait_seconds=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    deadline = time.monotonic() + 10
    while not handled and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    second = StageRunner("b", queues[1], handler("b"), {}, concurrency=4, wait_seconds=0.05)
    other = asyncio.create_task(second.run(stop))
    while len(handled) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(task, other)
    # Handed out once each, in order, by the runner that received them.
    assert handled == [("a", b"g1"), ("a", b"g2")]
    assert await queues[0].depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    for broker in brokers:
        await broker.close()


def _locked() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT INTO messages ...", {"text": "secret"},
                                   sqlite3.OperationalError("database is locked"))


async def test_database_trouble_is_retried_past_max_receives_then_stored(
        tmp_path: Path) -> None:
    """Today's budget (max_receives=2) would dead-letter it after two tries; a database that
    is down longer than that must cost nothing."""
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", max_receives=2))
    await queue.send(b"webhook")
    tries: list[int] = []
    stored: list[bytes] = []

    async def one(message: ReceivedMessage) -> list[Output]:
        tries.append(message.receive_count)
        if len(tries) <= 6:
            raise _locked()
        stored.append(message.body)
        return []

    runner = StageRunner("t", queue, one, {}, concurrency=1, wait_seconds=0.05,
                         error_backoff=0.01, db_retry_period=3600, db_retry_max_delay=0.02)
    await run_until(runner, lambda: stored == [b"webhook"])
    assert len(tries) == 7 and set(tries) == {1}  # the database's failures were not counted
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    await broker.close()


async def test_database_trouble_longer_than_the_period_dead_letters_with_the_reason(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", max_receives=50))
    await queue.send(b"webhook")

    async def one(message: ReceivedMessage) -> list[Output]:
        raise _locked()

    runner = StageRunner("t", queue, one, {}, concurrency=1, wait_seconds=0.05,
                         error_backoff=0.01, db_retry_period=0.3, db_retry_max_delay=0.05)
    await run_until(runner, lambda: bool(broker.read_one(
        "SELECT COUNT(*) FROM messages WHERE queue = 'in.dlq'", ())[0]))
    [letter] = await queue.dead_letters()
    reason = letter.attributes["reason"]
    assert reason.startswith("database unavailable for ")
    assert reason.endswith("OperationalError: database is locked")
    assert "secret" not in reason and "INSERT" not in reason  # no SQL, no parameters
    await broker.close()


async def test_a_failure_keeps_its_reason_into_the_dlq(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", max_receives=1))
    await queue.send(b"poison")

    async def one(message: ReceivedMessage) -> list[Output]:
        raise ValueError("no field 'entry' for 5511987654321")

    runner = StageRunner("t", queue, one, {}, concurrency=1, wait_seconds=0.05,
                         error_backoff=0.001)
    await run_until(runner, lambda: bool(broker.read_one(
        "SELECT COUNT(*) FROM messages WHERE queue = 'in.dlq'", ())[0]))
    [letter] = await queue.dead_letters()
    assert letter.attributes["reason"] == "ValueError: no field 'entry' for *********4321"
    await broker.close()


async def test_a_batch_failing_on_its_database_is_released_without_one_by_one_tries(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", max_receives=1))
    for i in range(5):
        await queue.send(f"m{i}".encode())
    batches = 0

    async def batch(messages: list[ReceivedMessage]) -> list[Output]:
        nonlocal batches
        batches += 1
        if batches < 4:
            raise _locked()
        return []

    async def one(message: ReceivedMessage) -> list[Output]:
        raise AssertionError("waiting for a database that is down, once per message")

    runner = StageRunner("t", queue, one, {}, concurrency=1, batch=10, wait_seconds=0.05,
                         error_backoff=0.01, batch_handler=batch, db_retry_max_delay=0.02)
    await run_until(runner, lambda: batches >= 4 and broker.read_one(
        "SELECT COUNT(*) FROM messages WHERE queue = 'in'", ())[0] == 0)
    assert (await queue.depth())["dead"] == 0
    await broker.close()


async def test_handle_received_keeps_fifo_order_and_runs_other_groups(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in.fifo", fifo=True, visibility_timeout=60))
    for body, group in ((b"a1", "a"), (b"a2", "a"), (b"b1", "b"), (b"a3", "a")):
        await queue.send(body, group_id=group, dedup_id=body.decode())
    handled: list[bytes] = []

    async def one(message: ReceivedMessage) -> list[Output]:
        if message.body == b"a1":
            raise ValueError("a1 fails")
        handled.append(message.body)
        return []

    runner = StageRunner("t", queue, one, {}, error_backoff=30)
    messages = await queue.receive(10)
    assert [m.body for m in messages] == [b"a1", b"a2", b"b1", b"a3"]
    await runner.handle_received(messages)
    assert handled == [b"b1"]  # a2 and a3 wait behind a1
    depth = await queue.depth()
    assert depth["visible"] + depth["delayed"] + depth["in_flight"] == 3
    assert await queue.receive(10) == []  # a1 backs off, and its group waits for it
    await broker.close()
