"""Write: route each event to its tenant through the broker and store it there, once.

Routing uses only the registry (Meta phone_number_id, falling back to the WABA id; Whapi
channel id; Chakra plugin id). Events of an unknown channel are parked with the reason, to be
replayed once the channel exists. Messages whose media is still pending get a retry job.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.credentials import CredentialsBroker
from wacloud.model import Event, InboundMessage, ProviderNotice, StatusUpdate, event_from_dict
from wacloud.stages.envelopes import INBOUND_MEDIA, Output, dumps
from wacloud.stages.receive import Park, describe


@dataclass(slots=True)
class WriteContext:
    broker: CredentialsBroker
    park: Park


def _route(events: list[Event], broker: CredentialsBroker
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
    return by_tenant, unroutable


async def write(data: bytes, ctx: WriteContext) -> list[Output]:
    batch = json.loads(data)
    return await write_events([event_from_dict(item) for item in batch["events"]], ctx)


async def write_events(events: list[Event], ctx: WriteContext) -> list[Output]:
    """Store `events` (of any tenants) with one transaction per tenant; park the unroutable."""
    by_tenant, unroutable = _route(events, ctx.broker)
    # A channel added a moment ago may be known to the process that took the webhook and not
    # yet to ours: look again with a fresh registry before parking anything.
    refreshed: bool = bool(unroutable) and await asyncio.to_thread(ctx.broker.refresh)
    if refreshed:
        more, unroutable = _route([e for group in unroutable.values() for e in group],
                                  ctx.broker)
        for tenant, routed in more.items():
            by_tenant.setdefault(tenant, []).extend(routed)

    for description, events in unroutable.items():
        await ctx.park(stage="write", reason=f"no tenant for {description}",
                       payload=dumps([e.to_dict() for e in events]).decode(),
                       provider=events[0].provider.value, channel_key=events[0].channel_key)

    outputs: list[Output] = []
    for tenant, events in by_tenant.items():
        store = await ctx.broker.tenant_store_async(tenant)
        result = await asyncio.to_thread(
            store.store_events,
            [e for e in events if isinstance(e, InboundMessage)],
            [e for e in events if isinstance(e, StatusUpdate)],
            [e for e in events if isinstance(e, ProviderNotice)])
        for message in result.pending_media:
            fields = message.to_dict()
            fields["raw"] = {}
            job = {"tenant": tenant, "message": fields}
            outputs.append(Output(INBOUND_MEDIA, OutgoingMessage(dumps(job))))
    return outputs
