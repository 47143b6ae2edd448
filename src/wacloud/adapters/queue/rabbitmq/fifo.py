"""A FIFO queue on RabbitMQ: partition queues with a single active consumer each.

A message goes to the partition its group id hashes to (`layout.partition_of`), so a group
lives in one partition. Each process consumes every partition, each on a channel of its own;
RabbitMQ delivers a partition to one consumer at a time (`x-single-active-consumer`), in order,
and hands it to another one only when that consumer's channel closes (its unacked messages
first, redelivered in order). The port's FIFO rules are applied to what the consumer holds
(see `consumer.py` and `buffer.py`): a release with a delay keeps the message held, its group
locked behind it.

The broker makes the first consumer the active one of every partition; processes that hold
more than their share hand partitions over to the others (`spread.py`), so that each sends
its part. A process that is not the active consumer of a partition receives nothing of it (its
receives spend up to `SETTLE_S` finding that out once). Delayed sends are refused, as SQS FIFO
does.
"""

from __future__ import annotations

import contextlib
import logging
import time

import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from wacloud.adapters.queue.base import OutgoingMessage, QueueMissing, QueueSpec
from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker
from wacloud.adapters.queue.rabbitmq.consumer import ConsumerQueue
from wacloud.adapters.queue.rabbitmq.envelope import Envelope
from wacloud.adapters.queue.rabbitmq.spread import Spread

log = logging.getLogger(__name__)

PREFETCH = 500  # per partition: how far one lane's backlog can be looked past
JOIN_RETRY_S = 30.0  # after a failure to consume the roll call


class RabbitFifoQueue(ConsumerQueue):
    prefetch = PREFETCH

    def __init__(self, broker: RabbitBroker, spec: QueueSpec) -> None:
        super().__init__(broker, spec)
        self._spread = Spread(len(self._sources))
        self._roll_call: AbstractChannel | None = None  # consuming the roll call on it
        self._join_after = 0.0  # when to try the roll call again after a failure

    async def _start(self) -> None:
        await super()._start()
        if len(self._sources) > 1 and (self._roll_call is None or self._roll_call.is_closed):
            await self._join()

    async def _join(self) -> None:
        """Consume the roll call (see `spread.py`): the others count this process by it."""
        old, self._roll_call = self._roll_call, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()  # not restored by a reconnection: counted once
        if time.monotonic() < self._join_after:
            return
        channel = await self.broker.channel()
        try:
            roll_call = await channel.declare_queue(
                self.layout.roll_call, durable=True, auto_delete=True,
                arguments={"x-queue-type": "classic"})
            await roll_call.consume(self._on_roll_call, no_ack=True)
        except aiormq.exceptions.AMQPError as exc:
            # Refused (permissions), or deleted by the last other consumer leaving between
            # the declare and the consume: alone as far as this process knows, for a while.
            self._join_after = time.monotonic() + JOIN_RETRY_S
            log.warning("queue %s: cannot consume %s (%s): not spreading partitions",
                        self.spec.name, self.layout.roll_call, type(exc).__name__)
            with contextlib.suppress(Exception):
                await channel.close()
            return
        self._roll_call = channel

    @staticmethod
    async def _on_roll_call(message: AbstractIncomingMessage) -> None:
        """Nothing is sent to the roll call; whatever is, is dropped (consumed without ack)."""

    async def _count_consumers(self) -> int:
        """The processes consuming this queue (1 while this one is not on the roll call)."""
        if self._roll_call is None or self._roll_call.is_closed:
            return 1
        try:
            [(_, consumers)] = await self.broker.stats([self.layout.roll_call], self.spec.name)
        except QueueMissing:
            return 1
        except Exception as exc:  # a hint only: a receive must not fail for it
            log.debug("queue %s: cannot count its consumers (%s)", self.spec.name,
                      type(exc).__name__)
            return self._spread.consumers
        return max(consumers, 1)

    async def stop(self) -> None:
        await super().stop()
        roll_call, self._roll_call = self._roll_call, None
        if roll_call is not None:
            with contextlib.suppress(Exception):
                await roll_call.close()

    def _delivered_on(self, index: int) -> None:
        self._spread.delivered(index, time.monotonic())

    def _forget(self, index: int) -> None:
        super()._forget(index)
        self._spread.lost(index)

    def _paused(self) -> frozenset[int]:
        return self._spread.frozen()

    async def _rebalance(self) -> None:
        if self._spread.due(time.monotonic()):
            self._spread.consumers = await self._count_consumers()
        held, handed_out = self._buffer.by_partition(len(self._sources))
        for index in self._spread.look(time.monotonic(), held, handed_out):
            log.info("queue %s: handing partition %d over (%d held) to another of its %d "
                     "consumers", self.spec.name, index, held[index], self._spread.consumers)
            await self._resubscribe(index)
            self._spread.gave(index, time.monotonic())

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
