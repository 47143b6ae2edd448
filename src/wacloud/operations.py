"""Operator actions shared by the CLI and the admin API: replay parked items, re-fetch media."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from wacloud.adapters.db import outbox
from wacloud.adapters.db.registry import ParkedItem, Registry
from wacloud.adapters.queue.base import OutgoingMessage, Queue, ReceivedMessage
from wacloud.credentials import CredentialsBroker
from wacloud.model import MediaStatus
from wacloud.stages.envelopes import INBOUND_RAW, OUTBOUND_SEND, RawWebhook, dumps
from wacloud.stages.receive import envelope_bytes


def replay_envelope(item: ParkedItem) -> bytes:
    """What goes back on `inbound.raw` for a parked item, by the stage that parked it.

    Marked as a replay, with the signed webhook and its signature when the item kept them:
    the receive stage checks each Meta event again against the channel it now routes to, and
    refuses Meta events that bring nothing to check (parked before signatures were kept)."""
    if item.stage == "receive":
        data = envelope_bytes(item.payload)
        try:
            raw = RawWebhook.decode(data)
        except (ValueError, KeyError, TypeError):
            return data  # not an envelope at all: the receive stage parks it again
        raw.replay = True
        return raw.encode()
    if item.stage == "write":
        body = item.payload.encode()
        if item.raw_body is not None:
            body = dumps({"events": json.loads(item.payload), "webhook": item.raw_body})
        return RawWebhook(provider=item.provider or "meta", channel_key=item.channel_key,
                          received_at=time.time(), body=body, kind="events",
                          signature=item.signature, replay=True).encode()
    raise ValueError(f"parked item {item.id} comes from stage {item.stage!r}, "
                     "which has no replay path")


async def replay_parked(registry: Registry, raw_queue: Queue, items: list[ParkedItem],
                        progress: Callable[[int], None] | None = None) -> list[int]:
    replayed: list[int] = []
    for item in items:
        await raw_queue.send(replay_envelope(item))
        await asyncio.to_thread(registry.mark_replayed, item.id)
        replayed.append(item.id)
        if progress is not None:
            progress(1)
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


def dead_letter_summary(queue: str, message: ReceivedMessage) -> dict[str, Any]:
    """What an operator may see of a dead letter: ids, size, times, the reason of its last
    failure and whom it concerns; never its content (texts, media links, tokens)."""
    summary: dict[str, Any] = {
        "id": message.message_id, "queue": queue, "size": len(message.body),
        "sent_at": datetime.fromtimestamp(message.sent_at, UTC).isoformat(),
        "receive_count": message.receive_count,
        "reason": message.attributes.get("reason") or None, "tenant": None}
    if queue == INBOUND_RAW:
        with contextlib.suppress(ValueError, KeyError):
            raw = RawWebhook.decode(message.body)
            summary.update(provider=raw.provider, channel=raw.channel_key, kind=raw.kind)
        return summary
    try:
        data = json.loads(message.body)
    except ValueError:
        return summary
    if not isinstance(data, dict):
        return summary
    if queue == OUTBOUND_SEND and isinstance(data.get("message"), dict):
        # The fields `wacloud dlq list` always showed for outbound messages.
        item = data["message"]
        summary.update(tenant=item.get("tenant"), row_id=item.get("row_id"),
                       channel=item.get("channel_key"), to=item.get("recipient"),
                       type=item.get("type"))
    elif isinstance(data.get("tenant"), str):
        summary["tenant"] = data["tenant"]
        if "row_id" in data:
            summary["row_id"] = data["row_id"]
    return summary


async def replay_dead_letters(broker: CredentialsBroker, send_queue: Queue,
                              ids: list[str] | None) -> list[str]:
    """Reset each dead letter's row to queued, then move the letters back to the send queue."""
    letters = await send_queue.dead_letters(limit=100_000)
    chosen = [m for m in letters if ids is None or m.message_id in ids]
    for letter in chosen:
        data = json.loads(letter.body)["message"]
        store = await asyncio.to_thread(broker.tenant_store, data["tenant"])
        await asyncio.to_thread(outbox.requeue_failed, store.engine, int(data["row_id"]))
    if chosen:
        await send_queue.redrive([m.message_id for m in chosen])
    return [m.message_id for m in chosen]
