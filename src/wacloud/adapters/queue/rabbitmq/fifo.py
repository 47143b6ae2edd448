"""A FIFO queue on RabbitMQ: partition queues with a single active consumer each.

A message goes to the partition its group id hashes to (`layout.partition_of`), so a group
lives in one partition. Each process consumes every partition; RabbitMQ delivers a partition
to one consumer at a time (`x-single-active-consumer`), in order, and hands it to another one
only when that consumer's channel closes (its unacked messages first, redelivered in order).
The port's FIFO rules are applied to what the consumer holds (see `consumer.py` and
`buffer.py`): a release with a delay keeps the message held, its group locked behind it.

A process that is not the active consumer of a partition receives nothing of it (its receives
spend up to `SETTLE_S` finding that out once). Delayed sends are refused, as SQS FIFO does.
"""

from __future__ import annotations

from wacloud.adapters.queue.base import OutgoingMessage
from wacloud.adapters.queue.rabbitmq.consumer import ConsumerQueue
from wacloud.adapters.queue.rabbitmq.envelope import Envelope

PREFETCH = 500  # per partition: how far one lane's backlog can be looked past


class RabbitFifoQueue(ConsumerQueue):
    prefetch = PREFETCH

    def target_of(self, envelope: Envelope) -> str:
        return self.layout.partition_for(envelope.group_id)

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        if any(m.delay > 0 for m in messages):
            raise ValueError(f"queue {self.spec.name!r} is FIFO: no per-message delay")
        await self.ensure()
        name = self.spec.name
        await self.broker.publish_many([
            (m.group_id or "", self.layout.partition_for(m.group_id),
             Envelope.new(m.body, name, m.group_id, m.dedup_id)) for m in messages])

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        entry = self._held(receipt)
        if entry is not None:
            self._release_here(entry, receipt, delay, reason, count)
