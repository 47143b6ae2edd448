"""Ingest backpressure over a real SQLite queue: the gate closes at the queue limit or under
the free-disk minimum and opens again once the stage catches up; the queue's lag
(`lag_seconds`) and bounded count (`holds_at_least`) read without the writer."""

from __future__ import annotations

import time
from pathlib import Path

from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.hosting.backpressure import IngestGate


async def test_the_gate_closes_at_the_queue_limit_and_opens_when_the_stage_catches_up(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    raw = broker.queue(QueueSpec("inbound.raw"))
    gate = IngestGate(raw.holds_at_least, tmp_path, limit=5, min_free_mb=0, interval=0.0)
    assert gate.admit() and await gate.admit_fresh()
    await raw.send_batch([OutgoingMessage(b"w") for _ in range(5)])
    assert not await gate.admit_fresh()
    assert gate.reason is not None and "WACLOUD_INBOUND_QUEUE_LIMIT" in gate.reason
    assert gate.state()["accepting"] is False
    # Messages in flight still count (they are not stored yet); acked ones do not.
    received = await raw.receive(2)
    assert not await gate.admit_fresh()
    await raw.ack([m.receipt for m in received])
    assert await gate.admit_fresh() and gate.reason is None
    await broker.close()


async def test_the_hot_path_reads_a_cached_state_at_most_every_interval(
        tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    raw = broker.queue(QueueSpec("inbound.raw"))
    reads: list[int] = []

    def full(limit: int) -> bool:
        reads.append(limit)
        return raw.holds_at_least(limit)

    gate = IngestGate(full, tmp_path, limit=1, min_free_mb=0, interval=60.0)
    await gate.admit_fresh()
    await raw.send(b"w")
    for _ in range(1000):
        assert gate.admit()  # the reading of a minute ago says open; no new one is due
    assert reads == [1]
    await broker.close()


async def test_the_gate_closes_under_the_free_disk_minimum(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    raw = broker.queue(QueueSpec("inbound.raw"))
    gate = IngestGate(raw.holds_at_least, tmp_path, limit=1_000_000,
                      min_free_mb=1 << 40, interval=0.0)  # more than any disk has
    assert not await gate.admit_fresh()
    assert gate.reason is not None and "WACLOUD_MIN_FREE_DISK_MB" in gate.reason
    await broker.close()


async def test_holds_at_least_counts_only_its_own_queue(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    raw = broker.queue(QueueSpec("inbound.raw"))
    other = broker.queue(QueueSpec("other"))
    for _ in range(3):  # its ids span 5, but it holds 3
        await raw.send(b"w")
        await other.send(b"o")
    assert raw.holds_at_least(3) and not raw.holds_at_least(4)
    assert not broker.queue(QueueSpec("empty")).holds_at_least(1)
    [dead] = await raw.receive(1)
    await raw.dead_letter(dead.receipt, "bad")
    assert not raw.holds_at_least(3)  # dead letters apart
    await broker.close()


async def test_lag_is_the_wait_of_the_oldest_ready_message(tmp_path: Path) -> None:
    broker = SqliteBroker(tmp_path / "q.db")
    queue = broker.queue(QueueSpec("in", visibility_timeout=300))
    assert await queue.lag_seconds() is None
    await queue.send(b"later", delay=60)
    assert await queue.lag_seconds() is None  # backing off is not waiting
    await queue.send(b"ready")
    sent = time.time()
    [held] = await queue.receive(1)
    assert await queue.lag_seconds() is None  # in flight is not waiting either
    await queue.release(held.receipt, 0.0)
    age = await queue.lag_seconds()
    assert age is not None and 0 <= age <= time.time() - sent + 0.01
    await broker.close()
