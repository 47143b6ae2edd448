"""What the standard and FIFO queues of RabbitMQ share: depth, the dead-letter queue (peek,
redrive, discard) and erasure by message id.

RabbitMQ can only hand messages out, so a peek takes them with `basic.get` on a short-lived
channel and gives them back (`basic.nack` with requeue; the DLQ is a classic queue, which puts
them back in place). Redrive, discard and erasure do the same and ack only the chosen ones.
Dead letters are listed in the order they were first sent.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import TYPE_CHECKING

import aiormq
from aio_pika.message import IncomingMessage

from wacloud.adapters.queue.base import Queue, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.rabbitmq.envelope import Envelope, died_at_limit, read

if TYPE_CHECKING:
    from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker

# The most messages one scan looks at (a peek, a redrive, an erasure).
SCAN_MAX = 100_000


class RabbitQueueBase(Queue, abc.ABC):
    def __init__(self, broker: RabbitBroker, spec: QueueSpec) -> None:
        self.broker = broker
        self.spec = spec
        self.layout = broker.layout(spec)
        self._ensured = False

    async def ensure(self) -> None:
        if not self._ensured:
            await self.broker.ensure(self.layout)
            self._ensured = True

    async def stop(self) -> None:
        """Called by the broker before its connection closes."""

    @abc.abstractmethod
    def in_flight_count(self) -> tuple[int, int, int]:
        """(visible, in flight, delayed) held by this process (not on the broker)."""

    def target_of(self, envelope: Envelope) -> str:
        """The broker queue a message of this queue is published to."""
        return self.layout.main

    async def depth(self) -> dict[str, int]:
        await self.ensure()
        names = [*self.layout.receive_from, self.layout.dead]
        waits = [] if self.spec.fifo else self.layout.waits
        counts = await self.broker.counts(names + waits, self.spec.name)
        ready = sum(counts[:len(names) - 1])
        visible, in_flight, delayed = self.in_flight_count()
        return {"visible": ready + visible, "in_flight": in_flight,
                "delayed": delayed + sum(counts[len(names):]), "dead": counts[len(names) - 1]}

    async def dead_count(self) -> int:
        await self.ensure()
        return (await self.broker.counts([self.layout.dead], self.spec.name))[0]

    async def _scan(self, raw: aiormq.abc.AbstractChannel, name: str,
                    limit: int) -> list[tuple[IncomingMessage, Envelope]]:
        out: list[tuple[IncomingMessage, Envelope]] = []
        while len(out) < limit:
            got = await raw.basic_get(name, no_ack=False)
            if got.delivery is None or not isinstance(got.delivery, aiormq.spec.Basic.GetOk):
                break
            message = IncomingMessage(got, no_ack=False)
            envelope = read(message, self.spec.name)[0]
            if died_at_limit(message):
                # The broker allows `max_receives` + 1 deliveries of one copy.
                envelope.receives += self.spec.max_receives + 1
            out.append((message, envelope))
        return out

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        await self.ensure()
        async with self.broker.scratch() as raw:
            letters = await self._scan(raw, self.layout.dead, SCAN_MAX)
            await self._give_back(raw, letters)
        letters.sort(key=lambda item: (item[1].order, item[1].sent_at))
        return [envelope.received("", envelope.receives, {
            "source_queue": envelope.queue, "reason": envelope.reason or "",
            "size": str(len(envelope.body))}) for _, envelope in letters[:limit]]

    async def _give_back(self, raw: aiormq.abc.AbstractChannel,
                         taken: list[tuple[IncomingMessage, Envelope]]) -> None:
        """Put back what a scan took and did not ack (`taken`, the highest delivery tags of
        the channel), before anyone counts the queue: closing the channel would too, but
        without saying when it is done."""
        if taken:
            await raw.basic_nack(max(m.delivery_tag or 0 for m, _ in taken), multiple=True,
                                 requeue=True)
        # Acks and nacks are not answered: a round trip makes sure they were done.
        await raw.queue_declare(self.layout.dead, passive=True)

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        await self.ensure()
        chosen = None if message_ids is None else set(message_ids)
        moved = 0
        async with self.broker.scratch() as raw:
            letters = await self._scan(raw, self.layout.dead, SCAN_MAX)
            picked = [(m, e) for m, e in letters if chosen is None or e.message_id in chosen]
            kept = [(m, e) for m, e in letters if (m, e) not in picked]
            picked.sort(key=lambda item: (item[1].order, item[1].sent_at))
            now = time.time()
            for message, envelope in picked:
                # A whole new budget: no receives, no reason, sent now (time-based retry
                # budgets are measured from it); the id and the order in its group are kept.
                # Its de-duplication id is dropped: a redrive is a deliberate re-injection and
                # must neither be swallowed by, nor swallow, a live message with the same id.
                fresh = dataclasses.replace(envelope, queue=self.spec.name, receives=0,
                                            reason=None, sent_at=now, dedup_id=None)
                await self.broker.publish(self.target_of(fresh), fresh)
                await message.ack()
                moved += 1
            await self._give_back(raw, kept)
        return moved

    async def discard(self, message_ids: list[str] | None = None) -> int:
        await self.ensure()
        if message_ids is None:
            async with self.broker.scratch() as raw:
                ok = await raw.queue_purge(self.layout.dead)
                return int(ok.message_count or 0)
        return await self._delete_from([self.layout.dead], set(message_ids))

    async def _delete_from(self, names: list[str], ids: set[str]) -> int:
        deleted = 0
        async with self.broker.scratch() as raw:
            for name in names:
                kept = []
                for message, envelope in await self._scan(raw, name, SCAN_MAX):
                    if envelope.message_id in ids:
                        await message.ack()
                        deleted += 1
                    else:
                        kept.append((message, envelope))
                await self._give_back(raw, kept)
        return deleted

    async def delete(self, message_ids: list[str]) -> int:
        """Erase messages by id from the broker queues (ready ones) and from what this process
        holds; a message held unacked by another process cannot be reached (run it again)."""
        await self.ensure()
        ids = set(message_ids)
        held = await self.drop_held(ids)
        names = [*self.layout.receive_from, self.layout.dead]
        if not self.spec.fifo:
            names += self.layout.waits
        return held + await self._delete_from(names, ids)

    @abc.abstractmethod
    async def drop_held(self, ids: set[str]) -> int:
        """Ack (delete) held messages of these ids; how many."""

