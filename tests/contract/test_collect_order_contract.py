"""Two collectors on one tenant database (SQLite, PostgreSQL, MariaDB), the real send and save
stages, the SQLite queue and the fake provider over real HTTP: every row is sent once, in
order per recipient, even when the collectors queue one recipient's rows out of order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from wacloud.adapters.db.tenant import claim
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.adapters.queue.sqlite.queue import SqliteQueue
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundStatus, Provider
from wacloud.hosting.runners import stage_runners
from wacloud.settings import Settings
from wacloud.stages import envelopes
from wacloud.stages.collect import (
    CollectContext,
    collect,
    collect_tenant,
    outbound_from_row,
    send_envelope,
)
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

TOKEN = "fake-token"
PN = "106540352242922"
om = t.outbound_messages


class HeldQueue(SqliteQueue):
    """The real send queue; a batch waits for `release` first (a collector slow between its
    claim and its send to the queue)."""

    def __init__(self, queue: SqliteQueue, release: asyncio.Event) -> None:
        super().__init__(queue.broker, queue.spec)
        self.release = release

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        await self.release.wait()
        await super().send_batch(messages)


@dataclass
class World:
    gateway: Gateway
    other_broker: CredentialsBroker  # the second collector's own connections, as a process
    fake: FakeProvider

    @property
    def send_queue(self) -> SqliteQueue:
        queue = self.gateway.queues[envelopes.OUTBOUND_SEND]
        assert isinstance(queue, SqliteQueue)
        return queue

    def ctx(self, broker: CredentialsBroker, queue: Queue | None = None,
            batch: int = 1) -> CollectContext:
        return CollectContext(broker, queue or self.send_queue, batch=batch)

    def insert(self, recipient: str, body: str) -> int:
        with self.gateway.broker.tenant_store("acme").engine.begin() as conn:
            result = conn.execute(om.insert().values(channel=PN, recipient=recipient,
                                                     type="text", content={"body": body}))
            return int(result.inserted_primary_key[0])

    def statuses(self) -> dict[int, int]:
        with self.gateway.broker.tenant_store("acme").engine.connect() as conn:
            return {int(r.id): int(r.status) for r in conn.execute(
                sa.select(om.c.id, om.c.status))}

    async def wait(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(predicate):
            assert time.monotonic() < deadline, f"timed out; rows: {self.statuses()}"
            await asyncio.sleep(0.05)

    def all_accepted(self) -> bool:
        return set(self.statuses().values()) == {OutboundStatus.ACCEPTED.value}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as server:
        yield server


@pytest.fixture
async def world(tmp_path: Path, tenant_db_url: str,
                fake_server: FakeProviderServer) -> AsyncIterator[World]:
    settings = Settings(data_dir=tmp_path, dev_allow_local_urls=True, send_backoff_base_s=0.1,
                        send_backoff_max_s=0.5, send_timeout_s=5, pair_burst=1000)
    gateway = build_gateway(settings)
    gateway.registry.add_tenant(
        "acme", None if tenant_db_url.startswith("sqlite") else tenant_db_url)
    gateway.registry.add_channel(tenant="acme", provider=Provider.META, key=PN,
                                 phone_number_id=PN, waba_id="W", token=TOKEN,
                                 display_number="5511940001234", mps=1000,
                                 api_base_url=fake_server.base_url)
    gateway.broker.refresh(force=True)
    other = CredentialsBroker(gateway.registry, tenants_dir=settings.tenants_dir)
    other.refresh(force=True)
    fake_server.provider.reset()
    try:
        yield World(gateway, other, fake_server.provider)
    finally:
        other.close()
        await gateway.close()


async def running(world: World, *loops: Callable[[asyncio.Event], Awaitable[None]],
                  until: Callable[[], bool]) -> None:
    """Run the send and save stages and `loops` until `until()` holds."""
    stop = asyncio.Event()
    runners = stage_runners(world.gateway, ("send", "save"))
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    tasks += [asyncio.create_task(loop(stop)) for loop in loops]
    try:
        await world.wait(until)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def collector(world: World, ctx: CollectContext) -> Callable[[asyncio.Event], Awaitable[None]]:
    async def loop(stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await collect(ctx):
                await asyncio.sleep(0.02)  # the poll interval of a real collector
    return loop


def bodies_to(fake: FakeProvider, recipient: str) -> list[str]:
    return [s.body["text"]["body"] for s in fake.sent_to(recipient) if s.accepted]


async def test_rows_queued_out_of_order_by_two_collectors_are_sent_in_order(
        world: World) -> None:
    to = "5511987650001"
    first, second = world.insert(to, "one"), world.insert(to, "two")
    release = asyncio.Event()
    # Collector A claims the first row, then is slow to queue it.
    slow = asyncio.create_task(collect_tenant(
        "acme", world.ctx(world.gateway.broker, HeldQueue(world.send_queue, release))))
    await world.wait(lambda: world.statuses()[first] == OutboundStatus.RESERVED.value)
    # Collector B claims and queues the second row meanwhile: its message comes first.
    assert await collect_tenant("acme", world.ctx(world.other_broker)) == 1
    release.set()
    assert await slow == 1
    assert world.statuses() == {first: OutboundStatus.QUEUED.value,
                                second: OutboundStatus.QUEUED.value}

    await running(world, collector(world, world.ctx(world.other_broker)),
                  until=world.all_accepted)
    assert bodies_to(world.fake, to) == ["one", "two"]


async def test_two_collectors_on_interleaved_rows_send_each_once_in_order(
        world: World) -> None:
    recipients = [f"55119876{n:05d}" for n in range(8)]
    for n in range(6):
        for to in recipients:
            world.insert(to, f"{to}-{n}")
    await running(world, collector(world, world.ctx(world.gateway.broker, batch=3)),
                  collector(world, world.ctx(world.other_broker, batch=2)),
                  until=world.all_accepted)
    assert world.fake.duplicates() == []
    for to in recipients:
        assert bodies_to(world.fake, to) == [f"{to}-{n}" for n in range(6)]
    sent: list[Any] = [s for s in world.fake.sent_snapshot() if s.accepted]
    assert len(sent) == len(recipients) * 6


async def test_a_message_whose_validity_passed_in_the_queue_is_not_sent(world: World) -> None:
    """The collector queued it in time; it then waited (queue, backoff) past its expiry: the
    send stage fails it as expired without calling the provider."""
    to = "5511987650002"
    row_id = world.insert(to, "OTP 123456")
    engine = world.gateway.broker.tenant_store("acme").engine
    (row,) = await asyncio.to_thread(claim.claim_pending, engine, 1)
    message = outbound_from_row("acme", row)
    message.expires_at = time.time() - 1  # as it is by the time the send stage gets it
    await world.send_queue.send_batch([send_envelope(message)])
    await asyncio.to_thread(claim.mark_queued, engine, [row_id])

    await running(world, until=lambda: world.statuses()[row_id] == OutboundStatus.FAILED.value)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(om).where(om.c.id == row_id)).mappings().one()
    assert stored["error_code"] == "expired"
    assert stored["error_reason"].startswith("expired: its validity ended at ")
    assert world.fake.sent_to(to) == []
