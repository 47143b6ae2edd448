"""A standard (not FIFO) queue on RabbitMQ: one quorum queue, competing consumers.

Receives, visibility and releases without a delay happen in the consumer (see `consumer.py`).
A release with a delay, and a delayed send, go through the wait queue of the delay's tier,
whose TTL dead-letters the message back (delays rounded up to a tier, see `layout.py`): a copy
carries the receive count and reason, and the original is acked once the copy is confirmed,
so backing-off messages do not hold the consumer's prefetch. At a stop, what the consumer holds
is handed back the same way, so a restart counts no receive (closing the channel would count
one for each message held, as a crash does).
"""

from __future__ import annotations

import asyncio
import dataclasses

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.adapters.queue.rabbitmq.consumer import ConsumerQueue
from wacloud.adapters.queue.rabbitmq.envelope import Envelope
from wacloud.adapters.queue.rabbitmq.layout import delay_tier_ms

PREFETCH = 300  # a stage receives up to 150 at a time: room for the next batch


class RabbitQueue(ConsumerQueue):
    prefetch = PREFETCH

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        await self.ensure()
        items = []
        for m in messages:
            envelope = Envelope.new(m.body, self.spec.name, m.group_id, m.dedup_id)
            target = self.layout.wait(delay_tier_ms(m.delay)) if m.delay > 0 else self.layout.main
            items.append((envelope.message_id, target, envelope))  # no order to keep
        await self.broker.publish_many(items)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        entry = self._held(receipt)
        if entry is None:
            return
        if delay <= 0:
            self._release_here(entry, receipt, delay, reason, count)
            return
        receives = entry.received if count else max(entry.received - 1, 0)
        copy = dataclasses.replace(entry.envelope, receives=receives,
                                   reason=reason if reason is not None else entry.envelope.reason)
        await self.broker.publish(self.layout.wait(delay_tier_ms(delay)), copy)
        self._buffer.remove(entry)
        await self._ack(entry)

    async def _hand_back(self) -> None:
        held = list(self._buffer)
        if not held:
            return
        await self.broker.publish_many([
            (e.envelope.message_id, self.layout.main,
             dataclasses.replace(e.envelope, receives=e.received)) for e in held])
        await asyncio.gather(*(self._ack(e) for e in held))
