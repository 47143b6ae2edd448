"""Saving a send result on the in-memory adapters: an acceptance applies the receipt that
arrived before it (in the send stage's commit, or in the save stage when that write failed),
and a result delivered again never moves the row back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.unit.stages.memory_world import PNID, TO, TOKEN, World, events_body, memory_world
from wacloud.domain.model import OutboundStatus, Provider, StatusUpdate
from wacloud.stages.envelopes import OUTBOUND_RESULTS, dumps
from wacloud.stages.write import WriteContext, write
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer

WAMID = "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABEYEjQ2"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
async def world(server: FakeProviderServer, tmp_path: Path) -> AsyncIterator[World]:
    async for built in memory_world(server, tmp_path):
        yield built


async def test_the_acceptance_applies_a_receipt_that_came_before_it_in_its_own_commit(
        world: World) -> None:
    row_id = await world.outbox_row()
    # Meta's "delivered" overtakes the answer to the send request.
    await write(events_body(delivered()), WriteContext(world.gateway.broker, world.gateway.park))
    world.fake.script(TO, times=1, status=200, message_id=WAMID)
    assert await world.handle("send")
    row = world.row(row_id)
    assert (row["status"], row["provider_message_id"]) == (OutboundStatus.DELIVERED.value,
                                                           WAMID)
    # Written by the send stage: nothing left for the save stage.
    assert (await world.queue(OUTBOUND_RESULTS).depth())["visible"] == 0


async def test_the_save_stage_writes_an_acceptance_the_send_stage_could_not_and_never_goes_back(
        world: World) -> None:
    row_id = await world.outbox_row()  # queued; its send's write is lost (database down)
    await write(events_body(delivered()), WriteContext(world.gateway.broker, world.gateway.park))
    result = dumps({"tenant": "acme", "row_id": row_id, "channel": PNID,
                    "status": OutboundStatus.ACCEPTED.value, "provider_message_id": WAMID,
                    "error_code": None, "error_reason": None, "response_excerpt": None,
                    "owner": "an-attempt"})
    await world.queue(OUTBOUND_RESULTS).send(result)
    assert await world.handle("save")
    row = world.row(row_id)
    assert (row["status"], row["provider_message_id"]) == (OutboundStatus.DELIVERED.value,
                                                           WAMID)
    # The same result again (a redelivery): the row stays delivered.
    await world.queue(OUTBOUND_RESULTS).send(result)
    assert await world.handle("save")
    assert world.row(row_id)["status"] == OutboundStatus.DELIVERED.value


def delivered() -> StatusUpdate:
    return StatusUpdate(provider=Provider.META, channel_key=PNID, provider_message_id=WAMID,
                        status="delivered", recipient=TO)
