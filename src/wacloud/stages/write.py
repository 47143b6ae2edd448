"""Write: route each event to its tenant through the broker and store it there, once.

Routing uses only the registry (Meta phone_number_id, falling back to the WABA id; Whapi
channel id; Chakra plugin id). Events of an unknown channel are parked with the reason, to be
replayed once the channel exists. Messages whose media is still pending get a retry job.
A value the tenant's database refuses (a constraint, an integer out of range) parks only the
event that carries it, with the reason; the other events of the same webhook are stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from wacloud.adapters.db.errors import failure_reason, is_refused_value
from wacloud.adapters.db.tenant_store import StoreResult, TenantStore
from wacloud.adapters.db.types import utcnow
from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials import CredentialsBroker
from wacloud.model import Event, InboundMessage, ProviderNotice, StatusUpdate, event_from_dict
from wacloud.stages.envelopes import INBOUND_MEDIA, Output, dumps
from wacloud.stages.receive import Park, describe

log = logging.getLogger(__name__)

# Where an event came from: the signed webhook as text and its signature header.
Origin = tuple[str, str]

# A channel's "last inbound at" (channel health) is written at most this often per channel
# and process: one small registry write per busy channel every few seconds, not per webhook.
INBOUND_NOTE_INTERVAL_S = 10.0


@dataclass(slots=True)
class WriteContext:
    broker: CredentialsBroker
    park: Park
    # Channel id -> monotonic time its last inbound was noted in the registry (this process).
    noted: dict[int, float] = field(default_factory=dict)


def _route(events: list[Event], broker: CredentialsBroker, seen: set[int] | None = None
           ) -> tuple[dict[str, list[Event]], dict[str, list[Event]]]:
    by_tenant: dict[str, list[Event]] = defaultdict(list)
    unroutable: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        channel = broker.channel(event.provider, event.channel_key, event.account_key)
        if channel is None:
            unroutable[describe(event)].append(event)
            continue
        event.channel_key = channel.key  # a WABA-id fallback stores under the channel's id
        by_tenant[channel.tenant].append(event)
        if seen is not None:
            seen.add(channel.id)
    return by_tenant, unroutable


async def note_inbound(ctx: WriteContext, channel_ids: set[int]) -> None:
    """Record in the registry that these channels' webhooks brought events (channel health),
    at most every INBOUND_NOTE_INTERVAL_S per channel. Never fails the write: it is a hint."""
    now = time.monotonic()
    due = [i for i in channel_ids if now - ctx.noted.get(i, -INBOUND_NOTE_INTERVAL_S)
           >= INBOUND_NOTE_INTERVAL_S]
    if not due:
        return
    for channel_id in due:
        ctx.noted[channel_id] = now
    try:
        await asyncio.to_thread(ctx.broker.registry.touch_inbound, due, utcnow())
    except Exception as exc:
        log.warning("last inbound time of %d channel(s) not recorded (%s)", len(due),
                    type(exc).__name__)


async def write(data: bytes, ctx: WriteContext) -> list[Output]:
    batch = json.loads(data)
    return await write_events([event_from_dict(item) for item in batch["events"]], ctx)


async def write_events(events: list[Event], ctx: WriteContext,
                       origins: Mapping[int, Origin] | None = None) -> list[Output]:
    """Store `events` (of any tenants) with one transaction per tenant; park the unroutable.
    `origins`: by `id(event)`, the signed webhook (text) and signature the event came from,
    kept with an event parked here so that its replay is checked again."""
    seen: set[int] = set()
    by_tenant, unroutable = _route(events, ctx.broker, seen)
    # A channel added a moment ago may be known to the process that took the webhook and not
    # yet to ours: look again with a fresh registry before parking anything.
    refreshed: bool = bool(unroutable) and await asyncio.to_thread(ctx.broker.refresh)
    if refreshed:
        more, unroutable = _route([e for group in unroutable.values() for e in group],
                                  ctx.broker, seen)
        for tenant, routed in more.items():
            by_tenant.setdefault(tenant, []).extend(routed)

    for description, events in unroutable.items():
        await ctx.park(stage="write", reason=f"no tenant for {description}",
                       payload=dumps([e.to_dict() for e in events]).decode(),
                       provider=events[0].provider.value, channel_key=events[0].channel_key)

    outputs: list[Output] = []
    for tenant, events in by_tenant.items():
        store = await ctx.broker.tenant_store_async(tenant)
        try:
            result = await asyncio.to_thread(_store, store, events)
        except Exception as exc:
            if not is_refused_value(exc):
                raise  # the database's trouble, not the data's: the runner retries the lot
            result = await _store_each(store, events, ctx, origins or {})
        for message in result.pending_media:
            fields = message.to_dict()
            fields["raw"] = {}
            job = {"tenant": tenant, "message": fields}
            outputs.append(Output(INBOUND_MEDIA, OutgoingMessage(dumps(job))))
    await note_inbound(ctx, seen)
    return outputs


def _store(store: TenantStore, events: list[Event]) -> StoreResult:
    return store.store_events([e for e in events if isinstance(e, InboundMessage)],
                              [e for e in events if isinstance(e, StatusUpdate)],
                              [e for e in events if isinstance(e, ProviderNotice)])


async def _store_each(store: TenantStore, events: list[Event], ctx: WriteContext,
                      origins: Mapping[int, Origin]) -> StoreResult:
    """One transaction per event (storing is idempotent, so those already stored are no-ops);
    an event the database refuses is parked with the reason instead of failing the rest."""
    total = StoreResult()
    for event in events:
        try:
            result = await asyncio.to_thread(_store, store, [event])
        except Exception as exc:
            if not is_refused_value(exc):
                raise
            raw_body, signature = origins.get(id(event), (None, None))
            await ctx.park(stage="write",
                           reason=f"the tenant database refused this event: {failure_reason(exc)}",
                           payload=dumps([event.to_dict()]).decode(),
                           provider=event.provider.value, channel_key=event.channel_key,
                           raw_body=raw_body, signature=signature)
            continue
        total.pending_media.extend(result.pending_media)
    return total
