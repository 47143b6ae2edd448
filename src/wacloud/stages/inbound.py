"""Receive and write as one step, for a host that runs both in one process.

A batch of queued webhooks is parsed (what cannot be is parked) and stored with one transaction
per tenant: one queue hop and many small transactions fewer than `receive` then `write` through
`inbound.events`, with the same rows in the end. Webhooks with media are stored apart, right
after their media's first try, so that a slow download never holds back the others. Hosts that
scale the two steps apart (Lambda, distributed workers) run them as two stages instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from wacloud.model import Event
from wacloud.stages.envelopes import Output
from wacloud.stages.receive import ReceiveContext, first_media_tries, receive_events, with_media
from wacloud.stages.write import WriteContext, write_events


@dataclass(slots=True)
class InboundContext:
    receive: ReceiveContext
    write: WriteContext


async def receive_and_write(bodies: list[bytes], ctx: InboundContext) -> list[Output]:
    parsed = [await receive_events(body, ctx.receive, first_media=False) for body in bodies]
    plain = [event for events in parsed if not with_media(events) for event in events]
    outputs = await write_events(plain, ctx.write) if plain else []

    async def media_first(events: list[Event]) -> list[Output]:
        await first_media_tries(events, ctx.receive)
        return await write_events(events, ctx.write)

    for more in await asyncio.gather(*(media_first(events) for events in parsed
                                       if with_media(events))):
        outputs.extend(more)
    return outputs
