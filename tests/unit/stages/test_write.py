"""The write stage on the in-memory adapters: routing by the WABA id when the number is not
known, and parking only the events no tenant has."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.unit.stages.memory_world import (
    PNID,
    TOKEN,
    World,
    events_body,
    inbound_rows,
    memory_world,
    text_message,
)
from wacloud.stages.write import WriteContext, write
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
async def world(server: FakeProviderServer, tmp_path: Path) -> AsyncIterator[World]:
    async for built in memory_world(server, tmp_path):
        yield built


def context(world: World) -> WriteContext:
    return WriteContext(world.gateway.broker, world.gateway.park)


async def test_an_unknown_number_of_a_known_waba_is_stored_under_the_waba_s_channel(
        world: World) -> None:
    event = text_message("wamid.by-waba", channel_key="999000111222333")
    assert await write(events_body(event), context(world)) == []
    [row] = inbound_rows(world)
    assert (row["provider_message_id"], row["channel"]) == ("wamid.by-waba", PNID)
    assert world.gateway.registry.parked_items() == []


async def test_only_the_events_no_tenant_has_are_parked(world: World) -> None:
    routed = text_message("wamid.routed")
    lost = text_message("wamid.lost", channel_key="999000111222333", account_key="55501")
    assert await write(events_body(routed, lost), context(world)) == []
    assert [r["provider_message_id"] for r in inbound_rows(world)] == ["wamid.routed"]
    [item] = world.gateway.registry.parked_items()
    assert (item.stage, item.provider, item.channel_key) == ("write", "meta", "999000111222333")
    assert item.reason.startswith("no tenant for meta channel '999000111222333'")
    assert "wamid.lost" in item.payload and "wamid.routed" not in item.payload
