"""The media stage on the in-memory adapters: a copy that lands in the media store, a
temporary failure retried with backoff, a copy that gives up when its attempts run out, and a
job given again after its copy was stored."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.unit.stages.memory_world import (
    TOKEN,
    World,
    events_body,
    forward,
    inbound_rows,
    memory_world,
    text_message,
)
from wacloud.domain.model import MediaRef
from wacloud.stages.envelopes import INBOUND_MEDIA, JUST_STORED
from wacloud.stages.media import MediaContext, fetch_media
from wacloud.stages.write import WriteContext, write
from wacloud.testing.fake_provider import FakeMedia, FakeProvider, FakeProviderServer

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(FakeProvider(token=TOKEN)) as srv:
        yield srv


@pytest.fixture
async def world(server: FakeProviderServer, tmp_path: Path) -> AsyncIterator[World]:
    async for built in memory_world(server, tmp_path, media_max_attempts=2):
        yield built


async def stored_with_media_pending(world: World) -> FakeMedia:
    """A message whose media is still to be copied, stored by the write stage, and its copy
    job on `inbound.media`."""
    media = world.fake.add_media(IMAGE, mime_type="image/png")
    event = text_message("wamid.photo", media=MediaRef(
        provider_media_id=media.id, mime_type="image/png", sha256=media.sha256_hex))
    await forward(world, await write(events_body(event), WriteContext(
        world.gateway.broker, world.gateway.park)))
    assert (await world.queue(INBOUND_MEDIA).depth())["visible"] == 1
    return media


async def test_the_media_is_copied_into_the_store_and_the_row_says_where(world: World) -> None:
    await stored_with_media_pending(world)
    assert await world.handle("media")
    [row] = inbound_rows(world)
    assert row["media_status"] == "stored" and row["media_key"]
    assert b"".join([c async for c in world.media.open(row["media_key"])]) == IMAGE


async def test_a_temporary_failure_is_retried_after_a_backoff(world: World) -> None:
    media = await stored_with_media_pending(world)
    world.fake.fail_media(media.id, times=1, status=503)
    assert not await world.handle("media")
    [row] = inbound_rows(world)
    assert row["media_status"] == "pending" and row["media_error"]
    assert 0.25 < world.hidden_for(INBOUND_MEDIA) <= 2.0  # backs off (base 1 s, cap 2 s)
    assert await world.handle("media", wait=5.0)
    [row] = inbound_rows(world)
    assert row["media_status"] == "stored"


async def test_when_the_attempts_run_out_the_media_fails_with_the_reason(world: World) -> None:
    media = await stored_with_media_pending(world)
    world.fake.fail_media(media.id, times=2, status=503)
    assert not await world.handle("media")
    assert await world.handle("media", wait=5.0)  # the second of media_max_attempts=2
    [row] = inbound_rows(world)
    assert row["media_status"] == "failed"
    assert "(gave up after 2 attempts)" in row["media_error"]
    assert row["media_key"] is None


async def test_a_job_given_again_after_its_copy_was_stored_does_not_copy_it_again(
        world: World) -> None:
    # The write stage's job skips the look at the row on its first receive; a second receive
    # (the process died between the copy and the ack) must look, and find the media stored.
    await stored_with_media_pending(world)
    [job] = await world.queue(INBOUND_MEDIA).receive(1)
    sent = json.loads(job.body)
    assert sent[JUST_STORED] is True and sent["message"]["raw"] == {}
    ctx = MediaContext(world.gateway.broker, world.gateway.copier)
    assert await fetch_media(job.body, 1, ctx) == []
    [row] = inbound_rows(world)
    assert row["media_status"] == "stored"
    calls = len(world.fake.requests)
    assert await fetch_media(job.body, 2, ctx) == []
    assert len(world.fake.requests) == calls  # neither the Graph lookup nor the download
    [again] = inbound_rows(world)
    assert again["media_key"] == row["media_key"]
