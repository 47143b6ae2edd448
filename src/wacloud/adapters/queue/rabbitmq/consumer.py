"""Receiving on RabbitMQ: a consumer per broker queue, and the port's rules over what it holds.

RabbitMQ has no visibility timeout: a delivered message stays with the channel that got it
until it is acked, rejected or the channel closes. So each process consumes its queue's broker
queues (`basic.consume` on a channel per broker queue, manual acks, `prefetch` unacked at most
per queue) into a `GroupBuffer`, and the port's receive, visibility timeout,
`extend_visibility`, release without delay and receive counts are applied there; only acks,
dead-lettering and re-publishing reach the broker. (`basic.get` would be exact without a
buffer, but on a quorum queue every get is a consensus round: about 200 messages/s here
against thousands for a consumer.)

Consequences: receipts, and the reasons and counts of receives in this process, live in the
process that holds the message; if it dies the broker redelivers everything its channels held,
handed out or not, each counted as one delivery (`x-delivery-count`), so a crash brings up to
`prefetch` messages one receive nearer the DLQ. A receive first asks the broker how many
messages are ready and gives them up to `SETTLE_S` to arrive (deliveries are pushed), so that
what was sent before a receive is seen by it. A delivery whose de-duplication id is that of a
message still held (not acked: still queued, as far as the port is concerned) is dropped.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from dataclasses import dataclass
from functools import partial

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from wacloud.adapters.queue.base import QueueSpec, ReceivedMessage
from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker
from wacloud.adapters.queue.rabbitmq.buffer import Entry, GroupBuffer
from wacloud.adapters.queue.rabbitmq.dead import RabbitQueueBase
from wacloud.adapters.queue.rabbitmq.envelope import read

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.05
SETTLE_S = 0.5


@dataclass(eq=False, slots=True)
class Subscription:
    """One broker queue consumed on a channel of its own: closing it gives back to the broker
    what it holds of that queue alone (and, on a FIFO partition, makes the next waiting
    consumer the active one)."""

    channel: AbstractChannel
    queue: AbstractQueue | None = None
    tag: str = ""


class ConsumerQueue(RabbitQueueBase, abc.ABC):
    prefetch: int  # unacked messages per consumed broker queue

    def __init__(self, broker: RabbitBroker, spec: QueueSpec) -> None:
        super().__init__(broker, spec)
        self._sources = self.layout.receive_from
        self._buffer = GroupBuffer(grouped=spec.fifo)
        self._subs: list[Subscription | None] = [None] * len(self._sources)
        self._orphans: list[AbstractChannel] = []
        self._start_lock = asyncio.Lock()
        self._arrived = asyncio.Event()
        self._delivered = [0] * len(self._sources)
        self._standby: set[int] = set()  # sources another process consumes (as far as known)

    def in_flight_count(self) -> tuple[int, int, int]:
        return self._buffer.counts(time.time())

    # -- consuming --

    def _live(self) -> bool:
        return all(s is not None and not s.channel.is_closed for s in self._subs)

    async def _start(self) -> None:
        if self._live():
            return
        async with self._start_lock:
            orphans, self._orphans = self._orphans, []
            for orphan in orphans:
                # A reconnection reopens a channel but not consumers made on it this way.
                with contextlib.suppress(Exception):
                    await orphan.close()
            for index, sub in enumerate(self._subs):
                if sub is None or sub.channel.is_closed:
                    await self._subscribe(index)

    async def _subscribe(self, index: int) -> None:
        """Consume source `index` on a new channel (behind the consumers already there)."""
        channel = await self.broker.channel()
        sub = Subscription(channel)
        try:
            # Per consumer (global_ would be per channel: quorum queues refuse it and the
            # connection is closed).
            await channel.set_qos(prefetch_count=self.prefetch)
            channel.close_callbacks.add(partial(self._on_close, index, sub))
            sub.queue = await channel.get_queue(self._sources[index], ensure=False)
            self._subs[index] = sub  # before the first delivery can come
            sub.tag = await sub.queue.consume(partial(self._on_message, index, sub),
                                              no_ack=False)
        except BaseException:
            self._subs[index] = None
            with contextlib.suppress(Exception):
                await channel.close()
            raise

    def _on_close(self, index: int, sub: Subscription, *_: object) -> None:
        # Whatever this channel held went back to the broker: those receipts are stale now,
        # and the next receive consumes that source on a new channel.
        if self._subs[index] is not sub:
            return  # given up on purpose (see `_resubscribe`), or an earlier one
        self._subs[index] = None
        self._orphans.append(sub.channel)
        self._forget(index)

    def _forget(self, index: int) -> None:
        """What source `index`'s channel held is the broker's again."""
        self._buffer.clear_partition(index)

    async def _resubscribe(self, index: int) -> None:
        """Give source `index` back to the broker (close its channel: what it holds is
        redelivered, in order) and consume it again, behind the other consumers."""
        async with self._start_lock:
            sub, self._subs[index] = self._subs[index], None
            self._forget(index)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.channel.close()
            self._standby.add(index)
        with contextlib.suppress(Exception):  # else the next receive subscribes again
            await self._start()

    def _delivered_on(self, index: int) -> None:
        """A delivery came from our current consumer of source `index`."""

    async def _on_message(self, index: int, sub: Subscription,
                          message: AbstractIncomingMessage) -> None:
        if self._subs[index] is not sub:
            return  # its channel is gone or going: the broker has the message back
        envelope, delivered = read(message, self.spec.name)
        newest = 0
        if self.spec.fifo:
            group = self._buffer.groups.get(envelope.group_id or "")
            newest = group[-1].envelope.order if group else 0
        # Sends of a group come in the order they were made; one older than the group's last
        # held message is a redriven one, which goes back to its place (before later ones).
        entry = self._buffer.add(envelope, message, index, envelope.receives + delivered,
                                 time.time(), redriven=envelope.order < newest)
        if entry is None:  # a copy of a message still held (queued): dropped
            await self._ack_message(message)
            return
        self._delivered[index] += 1
        self._standby.discard(index)
        self._delivered_on(index)
        self._arrived.set()

    async def _settle(self, *, all_of_them: bool) -> None:
        """Wait (up to SETTLE_S) for messages the broker holds ready in the queues this
        process may be the consumer of: a push consumer may not have them yet. With
        `all_of_them` until every one came (a FIFO partition has one consumer), else until
        one did (other consumers take their share)."""
        # Counted from before the question: what arrives while it is asked counts too.
        start = list(self._delivered)
        counts = await self.broker.counts(self._sources, self.spec.name)
        held = self._buffer.by_partition(len(self._sources))[0]
        expected = {i: min(c, self.prefetch - held[i]) for i, c in enumerate(counts)
                    if c > 0 and i not in self._standby and held[i] < self.prefetch}
        if not expected:
            return
        if not all_of_them:
            expected = {i: 1 for i in expected}
        deadline = time.monotonic() + SETTLE_S

        def short() -> list[int]:
            return [i for i, n in expected.items() if self._delivered[i] - start[i] < n]

        def settled() -> bool:
            missing = short()
            return not missing if all_of_them else len(missing) < len(expected)

        while not settled() and (remaining := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        if all_of_them:  # nothing at all came from these: another process consumes them
            self._standby.update(i for i in short() if self._delivered[i] == start[i])

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
        await self.ensure()
        await self._start()
        timeout = self.spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + wait_seconds
        if self.spec.fifo:
            await self._settle(all_of_them=True)  # lanes take turns over all that is there
            await self._rebalance()
        elif wait_seconds <= 0 and not self._buffer.counts(time.time())[0]:
            await self._settle(all_of_them=False)
        while True:
            got = await self._take(max_messages, timeout)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0 or self.broker.closed:
                return got
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(POLL_INTERVAL_S, remaining))

    async def _rebalance(self) -> None:
        """Hand over what this process should not be the consumer of (see `spread.py`)."""

    def _paused(self) -> frozenset[int]:
        """Sources of which nothing is handed out (being handed over)."""
        return frozenset()

    async def _take(self, limit: int, timeout: float) -> list[ReceivedMessage]:
        now = time.time()
        live, dead = self._buffer.pick(limit, now, self.spec.max_receives, self._paused())
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

    def _release_here(self, entry: Entry, receipt: str, delay: float, reason: str | None,
                      count: bool) -> None:
        """Visible again after `delay`, held by this process."""
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
        if seconds <= 0:
            self._arrived.set()
        return True

    async def dead_letter(self, receipt: str, reason: str) -> None:
        entry = self._held(receipt)
        if entry is not None:
            self._buffer.remove(entry)
            await self._to_dead(entry, entry.received, reason)

    async def has_waiting(self, longer_than: float = 0.0) -> bool:
        if self._buffer.counts(time.time())[0]:
            return True
        await self.ensure()
        return sum(await self.broker.counts(self._sources, self.spec.name)) > 0

    async def drop_held(self, ids: set[str]) -> int:
        chosen = [e for e in self._buffer if e.envelope.message_id in ids]
        for entry in chosen:
            self._buffer.remove(entry)
            await self._ack(entry)
        return len(chosen)

    async def stop(self) -> None:
        subs = [s for s in self._subs if s is not None]
        if not self.spec.fifo:
            # Nothing more is delivered here (not even what is handed back below). Not on a
            # FIFO partition: a cancelled active consumer keeps what it holds while the next
            # one starts on the messages behind them; closing the channel gives them back
            # first, in order.
            for sub in subs:
                if sub.queue is not None:
                    with contextlib.suppress(Exception):
                        await sub.queue.cancel(sub.tag)
        self._subs = [None] * len(self._sources)  # what still comes goes back at the close
        try:
            await self._hand_back()
        except Exception as exc:  # the broker gets them back when the channel closes
            log.warning("queue %s: could not hand back held messages at the stop (%s)",
                        self.spec.name, type(exc).__name__)
        orphans, self._orphans = self._orphans, []
        for closing in [*(s.channel for s in subs), *orphans]:
            with contextlib.suppress(Exception):
                await closing.close()  # the broker takes back what is still held
        self._buffer = GroupBuffer(grouped=self.spec.fifo)

    async def _hand_back(self) -> None:
        """Before the channel closes at a stop: give back what is held, if this kind of
        queue can without the broker counting a delivery (see the standard queue)."""
