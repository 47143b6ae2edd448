"""The collector over many tenants at once (real SQLite tenant files, the real SQLite queue):
every tenant's pending rows are collected, each recipient's rows keep their order, a tenant
whose database hangs does not hold up the others, and the schedule backs off idle tenants
until a wake or its maximum wait."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import wait_for
from wacloud.adapters.db.engines import create_engine
from wacloud.adapters.db.registry.store import Registry
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.credentials.broker import CredentialsBroker
from wacloud.domain.model import OutboundStatus, Provider
from wacloud.security.crypto import SecretBox, new_key
from wacloud.stages import envelopes
from wacloud.stages.collect import CollectContext, CollectSchedule, collect

PN = "106540352242922"
TENANTS = 24
RECIPIENTS = ("5511900000001", "5511900000002", "5511900000003")


@dataclass
class World:
    registry: Registry
    broker: CredentialsBroker
    queues: SqliteBroker
    queue_path: Path
    slugs: list[str]

    def ctx(self, **kwargs: object) -> CollectContext:
        queue = self.queues.queue(QueueSpec(envelopes.OUTBOUND_SEND, fifo=True))
        return CollectContext(self.broker, queue, batch=7, **kwargs)  # type: ignore[arg-type]

    def insert(self, slug: str, recipient: str, n: int) -> list[int]:
        with self.broker.tenant_store(slug).engine.begin() as conn:
            return [int(conn.execute(t.outbound_messages.insert().values(
                channel=PN, recipient=recipient, type="text",
                content={"text": {"body": str(i)}})).inserted_primary_key[0])
                for i in range(n)]

    def queued(self) -> list[tuple[str, int]]:
        """(tenant, row id) of each queued send, in queue order."""
        with sqlite3.connect(self.queue_path) as conn:
            rows = conn.execute("SELECT body FROM messages WHERE queue = ? AND origin IS NULL"
                                " ORDER BY id", (envelopes.OUTBOUND_SEND,)).fetchall()
        return [(m["tenant"], int(m["row_id"]))
                for m in (json.loads(body)["message"] for (body,) in rows)]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    registry = Registry(create_engine(f"sqlite:///{tmp_path / 'registry.db'}"),
                        SecretBox([new_key()]))
    registry.create_schema()
    slugs = [f"t{i:02d}" for i in range(TENANTS)]
    for slug in slugs:
        registry.add_tenant(slug)
        registry.add_channel(tenant=slug, provider=Provider.META, key=f"{PN}{slug}",
                             phone_number_id=f"{PN}{slug}", token="tok")
    # A cap below the tenant count: the pass closes and reopens engines as it goes.
    broker = CredentialsBroker(registry, tenants_dir=tmp_path / "tenants", cache_seconds=0,
                               tenant_engines_max=5)
    queues = SqliteBroker(tmp_path / "queues.db")
    try:
        yield World(registry, broker, queues, tmp_path / "queues.db", slugs)
    finally:
        await queues.close()
        broker.close()
        registry.engine.dispose()


async def test_every_tenants_rows_are_collected_in_order_per_recipient(world: World) -> None:
    expected: dict[tuple[str, str], list[int]] = {}
    for index, slug in enumerate(world.slugs):
        if index % 3 == 2:
            continue  # some tenants have nothing pending
        for recipient in RECIPIENTS[:1 + index % 3]:
            expected[(slug, recipient)] = world.insert(slug, recipient, 4 + index % 5)
    # Interleave recipients' rows in one tenant, so ids alternate between groups.
    for _ in range(3):
        for recipient in RECIPIENTS:
            expected.setdefault(("t00", recipient), []).extend(
                world.insert("t00", recipient, 1))
    total = sum(len(ids) for ids in expected.values())
    ctx = world.ctx(concurrency=6)

    queued = 0
    for _ in range(20):  # batches of 7: several passes
        queued += await collect(ctx)
        if queued >= total:
            break
    assert queued == total

    recipients = {(slug, row_id): recipient
                  for (slug, recipient), ids in expected.items() for row_id in ids}
    seen: dict[tuple[str, str], list[int]] = {}
    for slug, row_id in world.queued():
        seen.setdefault((slug, recipients[(slug, row_id)]), []).append(row_id)
    assert seen == {key: sorted(ids) for key, ids in expected.items()}
    for slug in world.slugs:
        with world.broker.tenant_store(slug).engine.connect() as conn:
            statuses = set(conn.execute(t.outbound_messages.select().with_only_columns(
                t.outbound_messages.c.status)).scalars())
        assert statuses <= {OutboundStatus.QUEUED.value}, (slug, statuses)


@pytest.fixture
def hanging_database() -> Iterator[tuple[str, socket.socket]]:
    """A PostgreSQL URL whose server accepts the connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        yield (f"postgresql+psycopg://u@127.0.0.1:{port}/hangs?connect_timeout=60", server)
    finally:
        server.close()


async def test_a_hanging_tenant_database_does_not_hold_up_the_others(
        world: World, hanging_database: tuple[str, socket.socket]) -> None:
    url, server = hanging_database
    world.registry.add_tenant("a-hangs", url)  # first in the registry's order
    world.broker.refresh(force=True)
    ids = {slug: world.insert(slug, RECIPIENTS[0], 2) for slug in world.slugs}
    ctx = world.ctx(concurrency=4)

    sweep = asyncio.create_task(collect(ctx))
    try:
        done = await asyncio.to_thread(
            wait_for, lambda: len(world.queued()) == 2 * TENANTS, 60.0, 0.05,
            "every other tenant's rows queued while one database hangs")
        assert done and not sweep.done()  # the hanging tenant's look is still waiting
        assert sorted(world.queued()) == sorted(
            (slug, row_id) for slug, rows in ids.items() for row_id in rows)
    finally:
        server.close()  # its connection attempt now fails; the pass ends
        assert await asyncio.wait_for(sweep, 60) == 2 * TENANTS


def test_schedule_backs_off_idle_tenants_and_a_wake_makes_one_due() -> None:
    schedule = CollectSchedule(poll_s=1.0, idle_max_s=4.0)
    tenants = ["a", "b"]
    assert schedule.due(tenants, time.monotonic()) == tenants  # unknown: due

    waits = []
    for _ in range(5):
        started = time.monotonic()
        schedule.looked("a", 0, started)
        pace = schedule._pace["a"]
        waits.append(pace.wait)
        assert "a" not in schedule.due(tenants, started)
        assert "a" in schedule.due(tenants, pace.due)  # due again once its wait is over
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]  # doubling up to the maximum

    schedule.wake("a")
    assert schedule.due(tenants, time.monotonic()) == tenants
    schedule.looked("a", 3, time.monotonic())  # rows: due at the next pass
    assert schedule._pace["a"].wait == 0.0
    assert "a" in schedule.due(tenants, time.monotonic())


def test_a_wake_during_a_look_that_found_nothing_keeps_the_tenant_due() -> None:
    schedule = CollectSchedule(poll_s=1.0, idle_max_s=30.0)
    started = time.monotonic()
    schedule.wake("a")  # the API inserted a row after the look had read the outbox
    schedule.looked("a", 0, started)
    assert schedule.due(["a"], time.monotonic()) == ["a"]
    schedule.forget([])
    assert schedule._pace == {}


async def test_a_scheduled_pass_skips_idle_tenants_until_woken(world: World) -> None:
    schedule = CollectSchedule(poll_s=3600.0, idle_max_s=3600.0)
    ctx = world.ctx(concurrency=4, schedule=schedule)
    assert await collect(ctx) == 0  # everyone idle: every tenant backs off

    world.insert("t05", RECIPIENTS[0], 2)
    world.insert("t06", RECIPIENTS[0], 1)
    assert await collect(ctx) == 0  # not due, not woken: left for later
    schedule.wake("t05")
    assert await collect(ctx) == 2  # the woken tenant only
    assert {slug for slug, _ in world.queued()} == {"t05"}
    assert await collect(ctx, reclaim=True) == 1  # a reclaim pass looks at every tenant


async def test_a_tenant_woken_during_a_pass_is_looked_at_before_the_rest(world: World) -> None:
    schedule = CollectSchedule(poll_s=3600.0, idle_max_s=3600.0)
    ctx = world.ctx(concurrency=1, schedule=schedule)
    last = world.slugs[-1]
    world.insert(last, RECIPIENTS[0], 1)
    first_looks: list[str] = []
    original = world.broker.tenant_store_async

    async def spy(tenant: str) -> object:
        if not first_looks:
            schedule.wake(last)  # the API inserts a row while the pass is on its first tenant
        first_looks.append(tenant)
        return await original(tenant)

    world.broker.tenant_store_async = spy  # type: ignore[method-assign,assignment]
    assert await collect(ctx) == 1
    assert first_looks[:2] == [world.slugs[0], last]  # taken next, not at the end
    assert first_looks.count(last) == 2 and len(first_looks) == TENANTS + 1
