"""A gateway on the in-memory queue broker and media store, for fast tests of each stage.

Built by `build_gateway` through its seams, so the stages are wired as in production; the
tenant database and the registry are real SQLite files and the provider is the fake provider
over real HTTP. A test hands one queued message to a stage's runner (`handle`): outputs are
forwarded and the input acked, or released with its delay, as the runner does in `serve`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from wacloud.adapters.db.tenant import outbox
from wacloud.adapters.db.tenant import tables as t
from wacloud.adapters.db.tenant.store import TenantStore
from wacloud.adapters.queue.base import Queue, ReceivedMessage
from wacloud.bootstrap import Gateway, build_gateway
from wacloud.domain.model import Channel, Event, InboundMessage, MediaRef, Provider
from wacloud.hosting.runners import runner_for
from wacloud.settings import Settings
from wacloud.stages.collect import collect
from wacloud.stages.envelopes import OUTBOUND_SEND, Output, dumps
from wacloud.testing.fake_provider import FakeProvider, FakeProviderServer
from wacloud.testing.memory_media import MemoryMediaStore
from wacloud.testing.memory_queue import MemoryQueueBroker

TOKEN = "memory-world-token-5521"
PNID = "106540352242922"
WABA = "102290129340398"
TO = "5511987654321"


@dataclass
class World:
    gateway: Gateway
    fake: FakeProvider
    channel: Channel
    media: MemoryMediaStore

    @property
    def store(self) -> TenantStore:
        return self.gateway.broker.tenant_store("acme")

    def queue(self, name: str) -> Queue:
        return self.gateway.queues[name]

    async def handle(self, stage: str, *, wait: float = 0.0) -> bool:
        """Give the next message of `stage`'s input queue to its runner; True if handled
        (outputs forwarded, input acked), False if released to be tried again."""
        [spec] = [s for s in self.gateway.stages() if s.name == stage]
        runner = runner_for(spec, self.gateway.queues, self.gateway.settings)
        received = await self.queue(spec.consumes).receive(1, wait_seconds=wait)
        assert received, f"nothing on {spec.consumes} for the {stage} stage"
        return await runner.handle(received[0])

    async def bodies(self, name: str) -> list[Any]:
        """Every message now visible on `name`, decoded, acked."""
        got: list[ReceivedMessage] = []
        while batch := await self.queue(name).receive(10):
            got.extend(batch)
            await self.queue(name).ack([m.receipt for m in batch])
        return [json.loads(m.body) for m in got]

    async def outbox_row(self, body: str = "oi", recipient: str = TO) -> int:
        """A new outbox row, collected onto `outbound.send`; its id."""
        row_id = outbox.insert_outbound(self.store.engine, channel=PNID, recipient=recipient,
                                        type="text", content={"body": body})
        self.gateway.wake_collector("acme")  # as the tenant API does after an insert
        assert await collect(self.gateway.collect_context()) >= 1
        return row_id

    def row(self, row_id: int) -> Any:
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(t.outbound_messages).where(
                t.outbound_messages.c.id == row_id)).mappings().one()

    def set_row(self, row_id: int, **values: Any) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(t.outbound_messages.update().where(
                t.outbound_messages.c.id == row_id).values(**values))

    def hidden_for(self, name: str) -> float:
        """Seconds until the one message of `name`, released by a stage, is visible again:
        the backoff the stage asked for (read from the in-memory queue itself)."""
        broker = self.gateway.queue_broker
        assert isinstance(broker, MemoryQueueBroker)
        [message] = broker.place.messages[name].values()
        assert message.receipt is None, "still held: not released"
        return message.visible_at - time.time()

    async def send_depth(self) -> dict[str, int]:
        return await self.queue(OUTBOUND_SEND).depth()


async def memory_world(server: FakeProviderServer, tmp_path: Path,
                       **settings: Any) -> AsyncIterator[World]:
    server.provider.reset()
    media = MemoryMediaStore()
    gateway = build_gateway(
        Settings(data_dir=tmp_path, dev_allow_local_urls=True, **{
            # Backoffs long enough to see, short enough to wait out with a long poll.
            "send_backoff_base_s": 1.0, "send_backoff_max_s": 2.0,
            "media_backoff_base_s": 1.0, "media_backoff_max_s": 2.0, **settings}),
        queue_broker=MemoryQueueBroker(), media_store=media)
    gateway.registry.add_tenant("acme")
    channel = gateway.registry.add_channel(
        tenant="acme", provider=Provider.META, key=PNID, phone_number_id=PNID, waba_id=WABA,
        token=TOKEN, app_secret="memory-world-secret", api_base_url=server.base_url)
    gateway.broker.refresh(force=True)
    try:
        yield World(gateway, server.provider, channel, media)
    finally:
        await gateway.close()
        server.provider.reset()


def inbound_rows(world: World) -> list[Any]:
    with world.store.engine.connect() as conn:
        return list(conn.execute(sa.select(t.messages).order_by(t.messages.c.id)).mappings())


async def forward(world: World, outputs: list[Output]) -> None:
    """What a runner does with a stage's outputs: queue them."""
    for output in outputs:
        await world.queue(output.queue).send(output.message.body)


def text_message(wamid: str, *, channel_key: str = PNID, account_key: str | None = WABA,
                 media: MediaRef | None = None) -> InboundMessage:
    return InboundMessage(provider=Provider.META, channel_key=channel_key,
                          provider_message_id=wamid, type="image" if media else "text",
                          account_key=account_key, sender=TO, recipient="5511940001234",
                          text=None if media else "olá", media=media)


def events_body(*events: Event) -> bytes:
    """An `inbound.events` body: what the write stage reads."""
    return dumps({"received_at": 1.0, "events": [e.to_dict() for e in events]})
