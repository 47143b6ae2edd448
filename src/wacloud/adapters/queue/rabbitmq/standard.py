"""A standard (not FIFO) queue on RabbitMQ: `basic.get` receives with visibility timers.

- `receive` takes messages with `basic.get` on this queue's own channel and keeps them unacked
  there; a long poll repeats it every `POLL_INTERVAL_S`. RabbitMQ has no visibility timeout:
  here a timer rejects the message back to the queue (`requeue`) when its visibility runs out,
  which the broker counts as a delivery (`x-delivery-count`). `extend_visibility` moves that
  timer. If the process dies its channel closes and the broker requeues the message at once.
- The receive count is the receives of earlier copies (a header) plus the broker's delivery
  count plus one; a message about to be received more than `max_receives` times goes to the
  DLQ with its reason instead (the queue's `x-delivery-limit` is a safety net behind that).
- `release(delay)` re-publishes a copy to the wait queue of the delay's tier (its TTL
  dead-letters it back; delays are rounded up to a tier, see layout.py), then acks the
  original; a plain `release()` is a `basic.reject` with requeue.
- Receipts are held by the process that received: another process's receipt is stale there.
- De-duplication: a message received while this process holds one with the same
  de-duplication id (it is still queued, as far as the port is concerned) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker
from wacloud.adapters.queue.rabbitmq.dead import RabbitQueueBase
from wacloud.adapters.queue.rabbitmq.envelope import Envelope, read
from wacloud.adapters.queue.rabbitmq.layout import delay_tier_ms

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 0.05


@dataclass(slots=True)
class Held:
    """A message this process received and has not acked, released or let go yet."""

    message: AbstractIncomingMessage
    envelope: Envelope
    receive_count: int
    timer: asyncio.TimerHandle | None = None


class RabbitQueue(RabbitQueueBase):
    def __init__(self, broker: RabbitBroker, spec: QueueSpec) -> None:
        super().__init__(broker, spec)
        self._held: dict[str, Held] = {}
        self._dedup: dict[str, str] = {}  # dedup id -> receipt, of held messages
        self._channel: AbstractChannel | None = None
        self._source: AbstractQueue | None = None
        self._get_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def in_flight_count(self) -> tuple[int, int, int]:
        return 0, len(self._held), 0

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        if not messages:
            return
        await self.ensure()
        plain: list[tuple[str, Envelope]] = []
        delayed: list[tuple[int, Envelope]] = []
        for m in messages:
            envelope = Envelope.new(m.body, self.spec.name, m.group_id, m.dedup_id)
            if m.delay > 0:
                delayed.append((delay_tier_ms(m.delay), envelope))
            else:
                plain.append((self.layout.main, envelope))
        await asyncio.gather(
            self.broker.publish_many(plain),
            *(self.broker.publish(self.layout.wait(tier), e) for tier, e in delayed))

    async def _queue(self) -> AbstractQueue:
        if self._channel is None or self._channel.is_closed or self._source is None:
            self._channel = await self.broker.channel()
            self._channel.close_callbacks.add(self._on_close)
            self._source = await self._channel.get_queue(self.layout.main, ensure=False)
        return self._source

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        if max_messages <= 0:
            return []
        await self.ensure()
        timeout = self.spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + wait_seconds
        while True:
            got = await self._take(max_messages, timeout)
            remaining = deadline - time.monotonic()
            if got or remaining <= 0 or self.broker.closed:
                return got
            await asyncio.sleep(min(POLL_INTERVAL_S, remaining))

    async def _take(self, limit: int, timeout: float) -> list[ReceivedMessage]:
        out: list[ReceivedMessage] = []
        async with self._get_lock:
            source = await self._queue()
            while len(out) < limit:
                message = await source.get(no_ack=False, fail=False)
                if message is None:
                    break
                envelope, delivered = read(message, self.spec.name)
                if envelope.dedup_id is not None and envelope.dedup_id in self._dedup:
                    # A copy of a message this process holds (still queued): dropped.
                    await self._drop(message)
                    continue
                count = envelope.receives + delivered + 1
                if count > self.spec.max_receives:
                    # Received max_receives times already: to the DLQ, reason and all.
                    await self._to_dead(message, envelope, count - 1, envelope.reason)
                    continue
                receipt = secrets.token_hex(12)
                held = Held(message, envelope, count)
                self._held[receipt] = held
                if envelope.dedup_id is not None:
                    self._dedup[envelope.dedup_id] = receipt
                self._arm(receipt, held, timeout)
                out.append(envelope.received(receipt, count))
        return out

    def _on_close(self, *_: object) -> None:
        # What the channel held went back to the broker (counted as delivered): the receipts
        # are stale. A reconnection reopens the channel for the next receives.
        for receipt in list(self._held):
            self._take_held(receipt)

    def _arm(self, receipt: str, held: Held, seconds: float) -> None:
        if held.timer is not None:
            held.timer.cancel()
        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(max(seconds, 0.0), self._expire, receipt)

    def _expire(self, receipt: str) -> None:
        held = self._take_held(receipt)
        if held is not None:
            self._background(self._requeue(held))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _requeue(self, held: Held) -> None:
        # A closed channel has given it back already.
        with contextlib.suppress(Exception):
            await held.message.reject(requeue=True)

    def _take_held(self, receipt: str) -> Held | None:
        held = self._held.pop(receipt, None)
        if held is None:
            return None
        if held.timer is not None:
            held.timer.cancel()
        dedup_id = held.envelope.dedup_id
        if dedup_id is not None and self._dedup.get(dedup_id) == receipt:
            del self._dedup[dedup_id]
        return held

    @staticmethod
    async def _drop(message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            await message.ack()

    async def ack(self, receipts: list[str]) -> None:
        for receipt in receipts:
            held = self._take_held(receipt)
            if held is not None:
                with contextlib.suppress(Exception):  # channel gone: it will come back
                    await held.message.ack()

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        held = self._take_held(receipt)
        if held is None:
            return
        if delay <= 0 and reason is None and count:
            await self._requeue(held)  # the broker counts the delivery
            return
        # A copy carries the new count and reason; the original is acked once it is durable.
        receives = held.receive_count if count else max(held.receive_count - 1, 0)
        copy = dataclasses.replace(held.envelope, receives=receives,
                                   reason=reason if reason is not None else held.envelope.reason)
        target = self.layout.wait(delay_tier_ms(delay)) if delay > 0 else self.layout.main
        await self.broker.publish(target, copy)
        with contextlib.suppress(Exception):
            await held.message.ack()

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        held = self._held.get(receipt)
        if held is None:
            return False
        if seconds <= 0:
            self._take_held(receipt)
            await self._requeue(held)
        else:
            self._arm(receipt, held, seconds)
        return True

    async def dead_letter(self, receipt: str, reason: str) -> None:
        held = self._take_held(receipt)
        if held is not None:
            await self._to_dead(held.message, held.envelope, held.receive_count, reason)

    async def _to_dead(self, message: AbstractIncomingMessage, envelope: Envelope,
                       receives: int, reason: str | None) -> None:
        await self.broker.publish(self.layout.dead, dataclasses.replace(
            envelope, queue=self.spec.name, receives=receives, reason=reason))
        with contextlib.suppress(Exception):
            await message.ack()

    async def has_waiting(self, longer_than: float = 0.0) -> bool:
        await self.ensure()
        return (await self.broker.counts([self.layout.main], self.spec.name))[0] > 0

    async def drop_held(self, ids: set[str]) -> int:
        dropped = 0
        for receipt, held in list(self._held.items()):
            if held.envelope.message_id in ids:
                self._take_held(receipt)
                with contextlib.suppress(Exception):
                    await held.message.ack()
                dropped += 1
        return dropped

    async def stop(self) -> None:
        for receipt in list(self._held):
            held = self._take_held(receipt)
            if held is not None:
                await self._requeue(held)
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()
