"""Collect: claim pending outbox rows atomically and queue them for sending.

Rows go on `outbound.send` as FIFO groups of (sending number, recipient), de-duplicated by
tenant and row id, so messages to one recipient leave in the order they were created while
other recipients of the same number are not held up. Rows whose channel is paused stay
pending. Reservations older than the lease go back to pending (a collector that crashed
between claim and queue would otherwise leave them stuck).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from wacloud.adapters.db import claim
from wacloud.adapters.queue.base import OutgoingMessage, Queue
from wacloud.credentials import CredentialsBroker
from wacloud.model import OutboundMessage
from wacloud.stages.envelopes import dumps

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CollectContext:
    broker: CredentialsBroker
    send_queue: Queue
    batch: int = 500
    lease_seconds: float = 300.0


def outbound_from_row(tenant: str, row: Any) -> OutboundMessage:
    created: datetime | None = row["created_at"]
    return OutboundMessage(
        tenant=tenant, row_id=int(row["id"]), channel_key=row["channel"],
        recipient=row["recipient"], type=row["type"], content=row["content"] or {},
        reply_to=row["reply_to"], client_reference=row["client_reference"],
        request_url=row["request_url"], request_body=row["request_body"],
        request_headers=row["request_headers"],
        created_at=created.timestamp() if created else 0.0)


def send_group(message: OutboundMessage) -> str:
    if message.type == "read":  # a mark-as-read keeps no order: a group of its own
        return f"{message.tenant}/{message.channel_key}/read:{message.row_id}"
    return f"{message.tenant}/{message.channel_key}/{message.recipient or '-'}"


def send_envelope(message: OutboundMessage) -> OutgoingMessage:
    return OutgoingMessage(dumps({"message": message.to_dict()}), group_id=send_group(message),
                           dedup_id=f"{message.tenant}:{message.row_id}")


async def collect_tenant(tenant: str, ctx: CollectContext, *, reclaim: bool = False) -> int:
    """One pass over one tenant; returns how many rows were queued."""
    store = await ctx.broker.tenant_store_async(tenant)
    engine = store.engine
    if reclaim:
        stale = await asyncio.to_thread(claim.reclaim_stale, engine, ctx.lease_seconds)
        if stale:
            log.warning("tenant %s: %d stale reservations returned to pending", tenant, stale)
    paused = ctx.broker.paused_channel_keys(tenant)
    rows = await asyncio.to_thread(claim.claim_pending, engine, ctx.batch,
                                   exclude_channels=paused)
    if not rows:
        return 0
    messages = [outbound_from_row(tenant, row) for row in rows]
    ids = [m.row_id for m in messages]
    try:
        await ctx.send_queue.send_batch([send_envelope(m) for m in messages])
    except Exception as exc:
        log.exception("tenant %s: could not queue %d rows", tenant, len(ids))
        await asyncio.to_thread(claim.mark_not_queued, engine, ids,
                                f"could not queue: {type(exc).__name__}")
        return 0
    await asyncio.to_thread(claim.mark_queued, engine, ids)
    return len(ids)


async def collect(ctx: CollectContext, *, reclaim: bool = False) -> int:
    """One pass over every tenant (a Lambda schedule calls this; embedded mode loops it)."""
    total = 0
    for tenant in ctx.broker.tenant_slugs():
        try:
            total += await collect_tenant(tenant, ctx, reclaim=reclaim)
        except Exception:  # one tenant's broken DB must not stop the others
            log.exception("collect failed for tenant %s", tenant)
    return total
