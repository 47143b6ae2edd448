"""A FIFO queue on RabbitMQ: partition queues with a single active consumer each.

A message goes to the partition its group id hashes to (`layout.partition_of`), so a group
lives in one partition. Each process consumes every partition; RabbitMQ delivers a partition
to one consumer at a time (`x-single-active-consumer`) in order, and hands it to another one
only when that consumer's channel closes (its unacked messages first, redelivered). The
consumer holds what it got (up to `PREFETCH` per partition) in a `GroupBuffer`, where the
port's FIFO rules are applied: receives, visibility, releases with a delay (the message stays
held, its group locked behind it), `extend_visibility` and receive counts happen there, and
only acks and dead-lettering reach the broker.

Consequences: receipts, reasons of releases and counts of receives live in the process that
holds the partition, and are lost with it (the broker's `x-delivery-count` then counts the
redelivery, of every message it held, handed out or not: a stop or a crash brings up to
`PREFETCH` messages of each partition one receive nearer the DLQ); a process that is not the
active consumer of a partition receives nothing of it.
Because deliveries are pushed, a receive first asks the broker how many messages wait in the
partitions and gives them up to `SETTLE_S` to arrive, so that what was sent before a receive
is seen by it (and lanes are served fairly). Delayed sends are refused, as SQS FIFO does.
De-duplication happens here too: a delivery whose de-duplication id is that of a message still
held (not acked yet: still queued, as far as the port is concerned) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from functools import partial

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker
from wacloud.adapters.queue.rabbitmq.buffer import Entry, GroupBuffer
from wacloud.adapters.queue.rabbitmq.dead import RabbitQueueBase
from wacloud.adapters.queue.rabbitmq.envelope import Envelope, read

log = logging.getLogger(__name__)
PREFETCH = 500  # per partition
POLL_INTERVAL_S = 0.05
SETTLE_S = 0.5


class RabbitFifoQueue(RabbitQueueBase):
    def __init__(self, broker: RabbitBroker, spec: QueueSpec) -> None:
        super().__init__(broker, spec)
        self._buffer = GroupBuffer()
        self._channel: AbstractChannel | None = None
        self._orphan: AbstractChannel | None = None
        self._start_lock = asyncio.Lock()
        self._arrived = asyncio.Event()
        self._delivered = [0] * self.layout.partitions
        self._standby: set[int] = set()  # partitions another process consumes (as far as known)

    def in_flight_count(self) -> tuple[int, int, int]:
        return self._buffer.counts(time.time())

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
            (self.layout.partition_for(m.group_id),
             Envelope.new(m.body, name, m.group_id, m.dedup_id)) for m in messages])

    # -- consuming --

    async def _start(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            return
        async with self._start_lock:
            if self._channel is not None and not self._channel.is_closed:
                return
            if self._orphan is not None:
                # A reconnection reopens a channel but not consumers made on it this way.
                with contextlib.suppress(Exception):
                    await self._orphan.close()
                self._orphan = None
            channel = await self.broker.channel()
            # Per consumer (global_ would be per channel: quorum queues refuse it and the
            # connection is closed).
            await channel.set_qos(prefetch_count=PREFETCH)
            channel.close_callbacks.add(self._on_close)
            for index, name in enumerate(self.layout.partition_names):
                source = await channel.get_queue(name, ensure=False)
                await source.consume(partial(self._on_message, index), no_ack=False)
            self._channel = channel

    def _on_close(self, *_: object) -> None:
        # Whatever this channel held went back to the broker: those receipts are stale now,
        # and the next receive consumes on a new channel.
        self._orphan, self._channel = self._channel, None
        for index in range(self.layout.partitions):
            self._buffer.clear_partition(index)

    async def _on_message(self, index: int, message: AbstractIncomingMessage) -> None:
        envelope, delivered = read(message, self.spec.name)
        # Sends of a group come in the order they were made; one older than the group's last
        # held message is a redriven one, which goes back to its place (before later ones).
        entry = self._buffer.add(envelope, message, index, envelope.receives + delivered,
                                 time.time(),
                                 redriven=envelope.order < self._newest_order(envelope.group_id))
        if entry is None:  # a copy of a message still held (queued): dropped
            await self._ack_message(message)
            return
        self._delivered[index] += 1
        self._standby.discard(index)
        self._arrived.set()

    def _newest_order(self, group_id: str | None) -> int:
        group = self._buffer.groups.get(group_id or "")
        return group[-1].envelope.order if group else 0

    async def _settle(self) -> None:
        """Wait (up to SETTLE_S) for what the broker holds ready in partitions this process
        may be the consumer of: a push consumer may not have it yet."""
        # Counted from before the question: what arrives while it is asked counts too.
        start = list(self._delivered)
        counts = await self.broker.counts(self.layout.partition_names, self.spec.name)
        held = [0] * self.layout.partitions
        for entry in self._buffer:
            held[entry.partition] += 1
        expected = {i: min(c, PREFETCH - held[i]) for i, c in enumerate(counts)
                    if c > 0 and i not in self._standby and held[i] < PREFETCH}
        if not expected:
            return
        deadline = time.monotonic() + SETTLE_S

        def short() -> list[int]:
            return [i for i, n in expected.items() if self._delivered[i] - start[i] < n]

        while short() and (remaining := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        # Nothing at all came from these: another process consumes them.
        self._standby.update(i for i in short() if self._delivered[i] == start[i])

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
        await self.ensure()
        await self._start()
        timeout = self.spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + wait_seconds
        await self._settle()
        while True:
            got = await self._take(max_messages, timeout)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0 or self.broker.closed:
                return got
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(POLL_INTERVAL_S, remaining))

    async def _take(self, limit: int, timeout: float) -> list[ReceivedMessage]:
        now = time.time()
        live, dead = self._buffer.pick(limit, now, self.spec.max_receives)
        for entry in dead:
            self._buffer.remove(entry)
            await self._to_dead(entry, entry.received, entry.envelope.reason)
        out = []
        for entry in live:
            receipt = secrets.token_hex(12)
            self._buffer.hand_out(entry, receipt, now + timeout)
            out.append(entry.envelope.received(receipt, entry.received))
        return out

    async def _to_dead(self, entry: Entry, receives: int, reason: str | None) -> None:
        await self.broker.publish(self.layout.dead, dataclasses.replace(
            entry.envelope, queue=self.spec.name, receives=receives, reason=reason))
        await self._ack(entry)

    async def _ack(self, entry: Entry) -> None:
        await self._ack_message(entry.handle)

    @staticmethod
    async def _ack_message(message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):  # channel gone: it comes back from the broker
            await message.ack()

    def _held(self, receipt: str) -> Entry | None:
        return self._buffer.by_receipt(receipt)

    async def ack(self, receipts: list[str]) -> None:
        for receipt in receipts:
            entry = self._held(receipt)
            if entry is not None:
                self._buffer.remove(entry)
                await self._ack(entry)

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        entry = self._held(receipt)
        if entry is None:
            return
        self._buffer.receipts.pop(receipt, None)
        entry.receipt = None
        entry.visible_at = time.time() + max(delay, 0.0)
        if not count:
            entry.received = max(entry.received - 1, 0)
        if reason is not None:
            entry.envelope.reason = reason
        self._arrived.set()

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        entry = self._held(receipt)
        if entry is None:
            return False
        entry.visible_at = time.time() + max(seconds, 0.0)
        return True

    async def dead_letter(self, receipt: str, reason: str) -> None:
        entry = self._held(receipt)
        if entry is not None:
            self._buffer.remove(entry)
            await self._to_dead(entry, entry.received, reason)

    async def drop_held(self, ids: set[str]) -> int:
        chosen = [e for e in self._buffer if e.envelope.message_id in ids]
        for entry in chosen:
            self._buffer.remove(entry)
            await self._ack(entry)
        return len(chosen)

    async def stop(self) -> None:
        channel, self._channel = self._channel, None
        for closing in (channel, self._orphan):
            if closing is not None:
                with contextlib.suppress(Exception):
                    await closing.close()  # the broker takes back what was held, in order
        self._orphan = None
        self._buffer = GroupBuffer()


