"""Receive and write as one step, for a host that runs both in one process.

A batch of queued webhooks is parsed (what cannot be is parked) and stored with one transaction
per tenant: one queue hop and many small transactions fewer than `receive` then `write` through
`inbound.events`, with the same rows in the end. Media is not tried here: a message is stored at
once with its media pending and the media stage makes the first try right after, so a slow
download never holds back a batch. AWS Lambda's writer runs it too (a queue hop fewer is
fewer SQS requests and invocations); a host that scales the two steps apart runs `receive`
and `write` as two stages instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from wacloud.domain.model import Event
from wacloud.observability.tracing import log_context
from wacloud.stages.envelopes import Output, RawWebhook, envelope_text, signed_webhook
from wacloud.stages.receive import ReceiveContext, receive_events, taken
from wacloud.stages.write import Origin, Trail, WriteContext, write_events


@dataclass(slots=True)
class InboundContext:
    receive: ReceiveContext
    write: WriteContext


async def receive_and_write(bodies: list[bytes], ctx: InboundContext) -> list[Output]:
    events: list[Event] = []
    # The signed webhook each event came from: an event the database refuses is parked with
    # it, so that `parked replay` can check its signature again.
    origins: dict[int, Origin] = {}
    trails: dict[int, Trail] = {}
    for body in bodies:
        raw = RawWebhook.decode(body)
        trace = taken(raw)
        with log_context(trace_id=trace):  # a webhook parked here is logged with its trace
            received = await receive_events(body, ctx.receive, first_media=False, raw=raw)
        trails.update((id(event), (trace, raw.received_at)) for event in received)
        webhook = signed_webhook(raw) if received and raw.signature else None
        if webhook is not None and raw.signature:
            origin = (envelope_text(webhook), raw.signature)
            origins.update((id(event), origin) for event in received)
        events.extend(received)
    return await write_events(events, ctx.write, origins, trails) if events else []
