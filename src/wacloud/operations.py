"""Operator actions shared by the CLI and the admin API: replay parked items, re-fetch media."""

from __future__ import annotations

import asyncio
import time

from wacloud.adapters.db.registry import ParkedItem, Registry
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.credentials import CredentialsBroker
from wacloud.model import MediaStatus
from wacloud.stages.envelopes import RawWebhook, dumps
from wacloud.stages.receive import envelope_bytes


def replay_envelope(item: ParkedItem) -> bytes:
    """What goes back on `inbound.raw` for a parked item, by the stage that parked it."""
    if item.stage == "receive":
        return envelope_bytes(item.payload)
    if item.stage == "write":
        return RawWebhook(provider=item.provider or "meta", channel_key=item.channel_key,
                          received_at=time.time(), body=item.payload.encode(),
                          kind="events").encode()
    raise ValueError(f"parked item {item.id} comes from stage {item.stage!r}, "
                     "which has no replay path")


async def replay_parked(registry: Registry, raw_queue: Queue, items: list[ParkedItem]
                        ) -> list[int]:
    replayed: list[int] = []
    for item in items:
        await raw_queue.send(replay_envelope(item))
        await asyncio.to_thread(registry.mark_replayed, item.id)
        replayed.append(item.id)
    return replayed


async def refetch_media(broker: CredentialsBroker, tenant: str, media_queue: Queue,
                        statuses: list[str]) -> int:
    """Queue a fresh copy attempt for every message of `tenant` whose media is in `statuses`."""
    store = broker.tenant_store(tenant)
    messages = await asyncio.to_thread(store.messages_with_media,
                                       statuses or [MediaStatus.FAILED.value])
    jobs = []
    for message in messages:
        data = message.to_dict()
        data["raw"] = {}
        jobs.append(OutgoingMessage(dumps({"tenant": tenant, "message": data, "force": True})))
    if jobs:
        await media_queue.send_batch(jobs)
    return len(jobs)
