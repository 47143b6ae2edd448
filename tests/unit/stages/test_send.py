"""The send stage as `serve` wires it (runner, queues, save stage), on the in-memory queue
broker: pausing a channel Meta says is unusable, giving a row back for order, retrying with
backoff, and failing for good."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.unit.stages.memory_world import TO, TOKEN, World, memory_world
from wacloud.domain.model import OutboundStatus
from wacloud.stages.collect import collect
from wacloud.stages.envelopes import OUTBOUND_RESULTS, OUTBOUND_SEND, OUTBOUND_SEND_DEAD
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
async def world(server: FakeProviderServer, tmp_path: Path) -> AsyncIterator[World]:
    async for built in memory_world(server, tmp_path, send_max_attempts=2):
        yield built


async def test_meta_error_190_pauses_the_channel_and_the_row_waits_in_the_outbox(
        world: World) -> None:
    row_id = await world.outbox_row()
    world.fake.script(TO, times=1, status=401, error_code=190,
                      error_message="Error validating access token: Session has expired")
    assert await world.handle("send")  # handled: nothing to retry from the queue
    row = world.row(row_id)
    assert (row["status"], row["error_code"]) == (OutboundStatus.PENDING.value, "190")
    channel = world.gateway.registry.channel_by_id(world.channel.id)
    assert channel is not None and channel.paused and "190" in (channel.pause_reason or "")
    # The collector leaves a paused channel's rows where they are.
    world.gateway.broker.refresh(force=True)
    world.gateway.wake_collector("acme")
    assert await collect(world.gateway.collect_context()) == 0
    assert (await world.send_depth())["visible"] == 0
    assert len(world.fake.sent_to(TO)) == 1


async def test_a_row_behind_an_earlier_one_goes_back_for_the_collector_to_queue_in_order(
        world: World) -> None:
    earlier = await world.outbox_row("1")
    later = await world.outbox_row("2")
    first_copy = await world.queue(OUTBOUND_SEND).receive(1)  # the earlier one, lost
    assert json.loads(first_copy[0].body)["message"]["row_id"] == earlier
    world.set_row(earlier, status=OutboundStatus.PENDING.value)  # e.g. its channel paused
    await world.queue(OUTBOUND_SEND).ack([first_copy[0].receipt])
    assert await world.handle("send")
    row = world.row(later)
    assert (row["status"], row["error_code"]) == (OutboundStatus.PENDING.value, "order")
    assert world.fake.sent_to(TO) == []
    # The next pass queues both again, oldest first, in one group.
    world.gateway.wake_collector("acme")
    assert await collect(world.gateway.collect_context()) == 2
    queued = [json.loads(m.body)["message"]["row_id"]
              for m in await world.queue(OUTBOUND_SEND).receive(10)]
    assert queued == [earlier, later]  # one FIFO group: the earlier first


async def test_a_temporary_error_is_retried_after_a_backoff_and_then_accepted(
        world: World) -> None:
    row_id = await world.outbox_row()
    world.fake.script(TO, times=1, status=503, error_code=131016)
    assert not await world.handle("send")  # released for a retry
    row = world.row(row_id)
    assert (row["status"], row["error_code"]) == (OutboundStatus.QUEUED.value, "131016")
    assert 0.25 < world.hidden_for(OUTBOUND_SEND) <= 2.0  # backs off (base 1 s, cap 2 s)
    assert await world.handle("send", wait=5.0)
    assert world.row(row_id)["status"] == OutboundStatus.ACCEPTED.value
    assert await world.bodies(OUTBOUND_RESULTS) == []  # written by the send stage itself
    assert [s.status for s in world.fake.sent_to(TO)] == [503, 200]


async def test_a_permanent_error_fails_the_row_and_leaves_the_channel_alone(
        world: World) -> None:
    row_id = await world.outbox_row()
    world.fake.script(TO, times=1, status=400, error_code=100,
                      error_message="Invalid parameter")
    assert await world.handle("send")
    row = world.row(row_id)
    assert (row["status"], row["error_code"]) == (OutboundStatus.FAILED.value, "100")
    channel = world.gateway.registry.channel_by_id(world.channel.id)
    assert channel is not None and not channel.paused
    assert (await world.send_depth())["visible"] == 0


async def test_when_the_attempts_run_out_the_row_fails_and_its_message_is_dead_lettered(
        world: World) -> None:
    row_id = await world.outbox_row()
    world.fake.script(TO, times=3, status=500, error_code=131000)
    assert not await world.handle("send")
    assert await world.handle("send", wait=5.0)  # the second of send_max_attempts=2
    row = world.row(row_id)
    assert row["status"] == OutboundStatus.FAILED.value
    assert row["error_reason"].startswith("gave up after 2 attempts")
    [letter] = await world.bodies(OUTBOUND_SEND_DEAD)
    assert letter["message"]["row_id"] == row_id
    assert len(world.fake.sent_to(TO)) == 2
