"""Receive and write as one step, for a host that runs both in one process.

A batch of queued webhooks is parsed (what cannot be is parked) and stored with one transaction
per tenant: one queue hop and many small transactions fewer than `receive` then `write` through
`inbound.events`, with the same rows in the end. Media is not tried here: a message is stored at
once with its media pending and the media stage makes the first try right after, so a slow
download never holds back a batch. Hosts that scale the two steps apart (Lambda, distributed
workers) run them as two stages instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from wacloud.stages.envelopes import Output
from wacloud.stages.receive import ReceiveContext, receive_events
from wacloud.stages.write import WriteContext, write_events


@dataclass(slots=True)
class InboundContext:
    receive: ReceiveContext
    write: WriteContext


async def receive_and_write(bodies: list[bytes], ctx: InboundContext) -> list[Output]:
    events = [event for body in bodies
              for event in await receive_events(body, ctx.receive, first_media=False)]
    return await write_events(events, ctx.write) if events else []
