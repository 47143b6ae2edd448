"""The RabbitMQ broker: one robust connection, publishing with confirms, provisioning.

`queue(spec)` does no I/O; a queue's first use checks (passive declare) that its broker queues
exist and raises `QueueMissing` naming the first one absent, unless the broker was opened with
`auto_create` (tests, development), which declares them instead. `create_queues` declares every
broker queue of the specs and leaves existing ones alone, so it is idempotent and never trips
over a queue declared earlier with other arguments (RabbitMQ refuses such a redeclare and closes
the channel): changing a queue's arguments (its delivery limit) means deleting it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from wacloud.adapters.queue.base import Queue, QueueBroker, QueueMissing, QueueSpec
from wacloud.adapters.queue.rabbitmq.envelope import Envelope
from wacloud.adapters.queue.rabbitmq.layout import Declaration, Layout
from wacloud.adapters.queue.rabbitmq.url import BrokerAddress

if TYPE_CHECKING:
    from wacloud.adapters.queue.rabbitmq.dead import RabbitQueueBase

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
RECONNECT_INTERVAL_S = 1.0
RECONNECT_WAIT_S = 10.0


class RabbitBroker(QueueBroker):
    def __init__(self, address: BrokerAddress, *, auto_create: bool = False) -> None:
        self.address = address
        self.auto_create = auto_create
        self._connection: AbstractRobustConnection | None = None
        self._connect_lock = asyncio.Lock()
        self._publisher: AbstractChannel | None = None
        self._publisher_lock = asyncio.Lock()
        self._stats: AbstractChannel | None = None
        self._stats_lock = asyncio.Lock()
        self._queues: dict[str, RabbitQueueBase] = {}
        self._ready: set[str] = set()
        self._ready_lock = asyncio.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"RabbitBroker({self.address.safe!r}, prefix={self.address.prefix!r})"

    def layout(self, spec: QueueSpec) -> Layout:
        return Layout(spec, self.address.prefix, self.address.partitions)

    def queue(self, spec: QueueSpec) -> Queue:
        from wacloud.adapters.queue.rabbitmq.fifo import RabbitFifoQueue
        from wacloud.adapters.queue.rabbitmq.standard import RabbitQueue

        known = self._queues.get(spec.name)
        if known is None or known.spec != spec:
            known = (RabbitFifoQueue if spec.fifo else RabbitQueue)(self, spec)
            self._queues[spec.name] = known
        return known

    # -- connection and channels --

    async def connection(self) -> AbstractRobustConnection:
        if self.closed:
            raise RuntimeError("the RabbitMQ broker is closed")
        if self._connection is None:
            async with self._connect_lock:
                if self._connection is None:
                    try:
                        self._connection = await aio_pika.connect_robust(
                            self.address.connect_url, timeout=CONNECT_TIMEOUT_S,
                            reconnect_interval=RECONNECT_INTERVAL_S,
                            client_properties={"connection_name": "wacloud"})
                    except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                        # The library's message may hold the URL: say where without it.
                        raise ConnectionError(f"cannot connect to RabbitMQ at "
                                              f"{self.address.safe}: {type(exc).__name__}"
                                              ) from None
        if not self._connection.connected.is_set():
            # Lost and reconnecting (aio-pika retries every RECONNECT_INTERVAL_S): wait for it
            # rather than open channels on a closed connection.
            try:
                await asyncio.wait_for(self._connection.ready(), RECONNECT_WAIT_S)
            except TimeoutError:
                raise ConnectionError(f"RabbitMQ at {self.address.safe} is unreachable "
                                      "(reconnecting)") from None
        return self._connection

    async def channel(self) -> AbstractChannel:
        """A new channel (for a consumer, or a queue's receives and acks)."""
        return await (await self.connection()).channel()

    @contextlib.asynccontextmanager
    async def scratch(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A short-lived channel; closing it gives back whatever it received and did not ack
        (how dead letters are peeked at) and a failed passive declare closes only it."""
        channel = await (await self.connection()).channel(publisher_confirms=False)
        try:
            yield await channel.get_underlay_channel()
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def publisher(self) -> AbstractChannel:
        """The publishing channel (confirms on). After a lost connection, one new channel for
        every publish waiting (a burst of webhooks) would pile up channels on the connection
        at each outage: they wait for the one being opened instead."""
        channel = self._publisher
        if channel is not None and not channel.is_closed:
            return channel
        async with self._publisher_lock:
            if self._publisher is None or self._publisher.is_closed:
                self._publisher = await (await self.connection()).channel(
                    on_return_raises=True)
            return self._publisher

    async def publish(self, routing_key: str, envelope: Envelope) -> None:
        """Publish and wait for the broker's confirm: durable when this returns. A queue that
        does not exist returns the message (mandatory): that raises `QueueMissing`."""
        publisher = await self.publisher()
        try:
            await publisher.default_exchange.publish(
                envelope.message(), routing_key, mandatory=True)
        except aiormq.exceptions.PublishError:
            raise QueueMissing(envelope.queue, self.address.safe) from None

    async def publish_many(self, items: list[tuple[str, str, Envelope]]) -> None:
        """Publish (order key, routing key, envelope) items, confirms awaited together;
        items of one order key (a FIFO group) go one after the other, in order."""
        by_key: dict[str, list[tuple[str, Envelope]]] = {}
        for order_key, routing_key, envelope in items:
            by_key.setdefault(order_key, []).append((routing_key, envelope))

        async def in_order(chain: list[tuple[str, Envelope]]) -> None:
            for routing_key, envelope in chain:
                await self.publish(routing_key, envelope)

        await asyncio.gather(*(in_order(chain) for chain in by_key.values()))

    async def counts(self, names: list[str], logical: str) -> list[int]:
        """Messages ready in each broker queue (not those delivered and unacked)."""
        return [ready for ready, _ in await self.stats(names, logical)]

    async def stats(self, names: list[str], logical: str) -> list[tuple[int, int]]:
        """(messages ready, consumers) of each broker queue, from passive declares."""
        async with self._stats_lock:
            if self._stats is None or self._stats.is_closed:
                self._stats = await (await self.connection()).channel(publisher_confirms=False)
            raw = await self._stats.get_underlay_channel()
            out = []
            for name in names:
                try:
                    ok = await raw.queue_declare(name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    self._stats = None  # the failed declare closed it
                    self._ready.discard(name)
                    raise QueueMissing(logical, self.address.safe) from None
                out.append((int(ok.message_count or 0), int(ok.consumer_count or 0)))
            return out

    # -- provisioning --

    async def ensure(self, layout: Layout) -> None:
        """Check once per process that the broker queues of `layout` exist (or declare them
        with `auto_create`); `QueueMissing` names the port queue otherwise."""
        wanted = [d for d in layout.declarations() if d.name not in self._ready]
        if not wanted:
            return
        async with self._ready_lock:
            missing = await self._provision(wanted, create=self.auto_create)
        if missing:  # the exception says which port queue; the log which broker queue
            log.debug("queue %s is missing on %s", missing, self.address.safe)
            raise QueueMissing(layout.spec.name, self.address.safe)

    async def _provision(self, declarations: list[Declaration], *, create: bool) -> str | None:
        """Make sure each queue exists: a passive declare, and when it fails (which closes the
        channel) a declaration if `create`, else the name of the first one missing."""
        channel = None
        try:
            for declaration in declarations:
                if declaration.name in self._ready:
                    continue
                if channel is None or channel.is_closed:
                    channel = await (await self.connection()).channel(publisher_confirms=False)
                raw = await channel.get_underlay_channel()
                try:
                    await raw.queue_declare(declaration.name, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    if not create:
                        return declaration.name
                    channel = await (await self.connection()).channel(publisher_confirms=False)
                    raw = await channel.get_underlay_channel()
                    # Quorum queues are always durable and never exclusive or auto-deleted.
                    await raw.queue_declare(declaration.name, durable=True,
                                            arguments=declaration.arguments)
                    log.info("declared queue %s on %s", declaration.name, self.address.safe)
                self._ready.add(declaration.name)
        finally:
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
        return None

    async def create_queues(self, specs: list[QueueSpec]) -> list[str]:
        layouts = [self.layout(spec) for spec in specs]
        dead = {layout.dead for layout in layouts}
        seen: dict[str, Declaration] = {}
        for layout in layouts:
            for declaration in layout.declarations():
                # A DLQ that is also a port queue of its own (outbound.send.dlq, which the
                # send stage sends to) is declared once, as a DLQ, whatever the order.
                if declaration.name in dead:
                    declaration = Declaration(declaration.name, layout.dead_arguments())
                seen.setdefault(declaration.name, declaration)
        async with self._ready_lock:
            self._ready.difference_update(seen)  # check again: someone may have deleted one
            await self._provision(list(seen.values()), create=True)
        return list(seen)

    async def close(self) -> None:
        if self.closed:
            return
        for queue in list(self._queues.values()):
            await queue.stop()
        self.closed = True
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = None
