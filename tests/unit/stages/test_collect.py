"""The collector against a real registry, real tenant databases (SQLite, PostgreSQL, MariaDB)
and the real SQLite queue: queue errors are passing trouble, stale queued rows are queued
again, expired rows fail as `expired`."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.adapters.queue.sqlite.queue import SqliteQueue
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundStatus, Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages import envelopes
from wacloud.stages.collect import CollectContext, collect, collect_tenant

PN = "106540352242922"
om = t.outbound_messages


class FailingQueue(SqliteQueue):
    """The real queue, except that its next `failures` batches are refused (a queue that is
    down or throttled for a moment)."""

    def __init__(self, broker: SqliteBroker, spec: QueueSpec, failures: int) -> None:
        super().__init__(broker, spec)
        self.failures = failures

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("queue unavailable")
        await super().send_batch(messages)


@dataclass
class World:
    queue_path: Path
    broker: CredentialsBroker
    queue: FailingQueue
    engine: Engine

    def ctx(self) -> CollectContext:
        return CollectContext(self.broker, self.queue, batch=100, lease_seconds=300,
                              queued_stale_seconds=600)

    def insert(self, recipient: str = "5511987654321", **values: Any) -> int:
        with self.engine.begin() as conn:
            result = conn.execute(om.insert().values(
                channel=PN, recipient=recipient, type="text", content={"body": "oi"},
                **values))
            return int(result.inserted_primary_key[0])

    def row(self, row_id: int) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(om).where(om.c.id == row_id)).mappings().one()

    def set(self, row_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(om.update().where(om.c.id == row_id).values(**values))

    def queued(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Live messages of outbound.send: (group id, dedup id, the message)."""
        with sqlite3.connect(self.queue_path) as conn:
            rows = conn.execute("SELECT group_id, dedup_id, body FROM messages WHERE queue = ?"
                                " AND origin IS NULL ORDER BY id",
                                (envelopes.OUTBOUND_SEND,)).fetchall()
        return [(g, d, json.loads(b)["message"]) for g, d, b in rows]


@pytest.fixture
async def world(tmp_path: Path, tenant_db_url: str) -> AsyncIterator[World]:
    registry = Registry(create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    registry.add_tenant("acme", None if tenant_db_url.startswith("sqlite") else tenant_db_url)
    registry.add_channel(tenant="acme", provider=Provider.META, key=PN, phone_number_id=PN,
                         waba_id="W", display_number="5511940001234", token="tok")
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0)
    queue_broker = SqliteBroker(tmp_path / "queues.db")
    queue = FailingQueue(queue_broker, QueueSpec(envelopes.OUTBOUND_SEND, fifo=True), 0)
    try:
        yield World(tmp_path / "queues.db", broker, queue, broker.tenant_store("acme").engine)
    finally:
        await queue_broker.close()
        broker.close()
        registry.engine.dispose()


async def test_a_queue_error_leaves_the_rows_claimable_for_a_later_pass(world: World) -> None:
    ids = [world.insert(), world.insert(), world.insert("5521912345678")]
    world.queue.failures = 1

    assert await collect_tenant("acme", world.ctx()) == 0

    for row_id in ids:  # not -99: back to pending, with the reason shown meanwhile
        row = world.row(row_id)
        assert row["status"] == OutboundStatus.PENDING.value
        assert "could not queue yet (ConnectionError)" in row["error_reason"]
    assert world.queued() == []

    assert await collect_tenant("acme", world.ctx()) == 3
    assert [world.row(i)["status"] for i in ids] == [OutboundStatus.QUEUED.value] * 3
    assert [(d, m["row_id"]) for _, d, m in world.queued()] == [(f"acme:{i}", i) for i in ids]


async def test_expired_rows_fail_as_expired_instead_of_being_queued(world: World) -> None:
    now = utcnow()
    late = world.insert(expires_at=now - timedelta(seconds=1))
    valid = world.insert(expires_at=now + timedelta(minutes=10))
    forever = world.insert()

    assert await collect_tenant("acme", world.ctx()) == 2

    row = world.row(late)
    assert row["status"] == OutboundStatus.FAILED.value and row["error_code"] == "expired"
    assert row["error_reason"].startswith("expired: its validity ended at ")
    messages = {m["row_id"]: m for _, _, m in world.queued()}
    assert set(messages) == {valid, forever}
    # The send stage gets the validity too (it checks again before sending).
    assert messages[valid]["expires_at"] == pytest.approx(
        world.row(valid)["expires_at"].timestamp())
    assert messages[forever]["expires_at"] is None


async def test_a_stale_queued_row_is_queued_again_with_its_dedup_id(world: World) -> None:
    row_id = world.insert()
    assert await collect_tenant("acme", world.ctx()) == 1
    (group, dedup, _), = world.queued()
    old = utcnow() - timedelta(hours=1)

    # Its message is still queued (say, a long retry backoff): the copy is de-duplicated.
    world.set(row_id, updated_at=old, queued_at=old)
    await collect_tenant("acme", world.ctx(), reclaim=True)
    assert [(g, d) for g, d, _ in world.queued()] == [(group, dedup)]
    assert world.row(row_id)["updated_at"] > old + timedelta(minutes=30)

    # Its message was consumed but the result never came back (lost): queued again.
    (received,) = await world.queue.receive(10)
    await world.queue.ack([received.receipt])
    assert world.queued() == []
    world.set(row_id, updated_at=old, queued_at=old, attempts=1)
    await collect_tenant("acme", world.ctx(), reclaim=True)
    assert [(g, d, m["row_id"]) for g, d, m in world.queued()] == [(group, dedup, row_id)]
    row = world.row(row_id)
    assert row["status"] == OutboundStatus.QUEUED.value
    assert row["queued_attempts"] == 1 and row["queued_at"] > old + timedelta(minutes=30)

    # A fresh queued row is left alone; a stale one whose validity passed fails instead.
    await collect_tenant("acme", world.ctx(), reclaim=True)
    assert len(world.queued()) == 1
    world.set(row_id, updated_at=old, expires_at=utcnow() - timedelta(seconds=5))
    await collect_tenant("acme", world.ctx(), reclaim=True)
    assert world.row(row_id)["error_code"] == "expired"


async def test_a_row_that_can_never_be_queued_is_marked_not_queued(
        world: World, tenant_db_url: str) -> None:
    if not tenant_db_url.startswith("sqlite"):
        pytest.skip("only SQLite stores JSON text that no envelope can carry")
    good = world.insert()
    with world.engine.begin() as conn:  # a tenant's own system wrote a broken escape
        bad = int(conn.execute(sa.text(
            "INSERT INTO outbound_messages (channel, recipient, type, content) "
            "VALUES (:c, '5511987654321', 'text', '{\"body\": \"\\ud800\"}') RETURNING id"),
            {"c": PN}).scalar_one())
    assert await collect_tenant("acme", world.ctx()) == 1
    row = world.row(bad)
    assert row["status"] == OutboundStatus.NOT_QUEUED.value
    assert row["error_reason"].startswith("invalid row: UnicodeEncodeError")
    assert [m["row_id"] for _, _, m in world.queued()] == [good]


class HeldQueue(FailingQueue):
    """The real queue, whose sends wait until the test lets them go."""

    def __init__(self, broker: SqliteBroker, spec: QueueSpec) -> None:
        super().__init__(broker, spec, 0)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        self.entered.set()
        await self.go.wait()
        await super().send_batch(messages)


async def test_a_pass_cancelled_at_a_stop_still_queues_the_rows_it_claimed(
        world: World) -> None:
    ids = [world.insert(), world.insert("5521912345678")]
    held = HeldQueue(world.queue.broker, world.queue.spec)
    ctx = CollectContext(world.broker, held, batch=100)
    task = asyncio.create_task(collect_tenant("acme", ctx))
    await asyncio.wait_for(held.entered.wait(), 10)
    task.cancel()  # the stop's deadline, between the claim and the queue send
    await asyncio.sleep(0.05)  # lets the cancellation reach the pass before the send goes on
    held.go.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Nothing left reserved for its lease: the pass queued what it had claimed.
    assert [world.row(i)["status"] for i in ids] == [OutboundStatus.QUEUED.value] * 2
    assert len(world.queued()) == 2


async def test_a_stopped_collector_leaves_the_other_tenants_for_the_next_start(
        world: World) -> None:
    world.insert()
    stop = asyncio.Event()
    stop.set()
    ctx = CollectContext(world.broker, world.queue, batch=100, stop=stop)
    assert await collect(ctx) == 0
    assert world.queued() == []
