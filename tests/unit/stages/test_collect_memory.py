"""The collector on the in-memory queue: each row queued once, in its recipient's FIFO group and
in order, and a paused channel's rows left in the outbox until it is resumed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.unit.stages.memory_world import PNID, TO, TOKEN, World, memory_world
from wacloud.adapters.db.tenant import outbox
from wacloud.domain.model import OutboundStatus
from wacloud.stages.collect import collect
from wacloud.stages.envelopes import OUTBOUND_SEND
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

OTHER = "5511900001111"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
async def world(server: FakeProviderServer, tmp_path: Path) -> AsyncIterator[World]:
    async for built in memory_world(server, tmp_path):
        yield built


def insert(world: World, recipient: str, body: str) -> int:
    return outbox.insert_outbound(world.store.engine, channel=PNID, recipient=recipient,
                                  type="text", content={"body": body})


async def test_rows_are_queued_once_in_their_recipient_s_group_and_in_order(
        world: World) -> None:
    ids = [insert(world, TO, "1"), insert(world, OTHER, "a"), insert(world, TO, "2")]
    world.gateway.wake_collector("acme")
    ctx = world.gateway.collect_context()
    assert await collect(ctx) == 3
    assert await collect(ctx) == 0  # queued rows are not claimed again
    assert [world.row(i)["status"] for i in ids] == [OutboundStatus.QUEUED.value] * 3
    got = await world.queue(OUTBOUND_SEND).receive(10)
    groups = {m.group_id for m in got}
    assert groups == {f"acme/{PNID}/{TO}", f"acme/{PNID}/{OTHER}"}
    to_first = [json.loads(m.body)["message"]["row_id"] for m in got
                if m.group_id == f"acme/{PNID}/{TO}"]
    assert to_first == [ids[0], ids[2]]


async def test_a_paused_channel_s_rows_wait_in_the_outbox_until_it_is_resumed(
        world: World) -> None:
    row_id = insert(world, TO, "1")
    world.gateway.wake_collector("acme")
    world.gateway.registry.set_channel_pause(world.channel.id, True, "error 190")
    world.gateway.broker.refresh(force=True)
    ctx = world.gateway.collect_context()
    assert await collect(ctx) == 0
    assert world.row(row_id)["status"] == OutboundStatus.PENDING.value
    assert (await world.send_depth())["visible"] == 0
    world.gateway.registry.set_channel_pause(world.channel.id, False, None)
    world.gateway.broker.refresh(force=True)
    world.gateway.wake_collector("acme")  # or its next look, within WACLOUD_COLLECT_IDLE_MAX_S
    assert await collect(ctx) == 1
    assert (await world.send_depth())["visible"] == 1
