"""The queue port on RabbitMQ (aio-pika): `amqp://USER:PW@HOST:PORT/VHOST?prefix=NAME`.

Durable quorum queues, publisher confirms (a send is durable when it returns), manual acks,
dead-letter queues fed after `max_receives` receives (`x-delivery-limit` as a safety net),
delayed retries without plugins (TTL wait queues that dead-letter back) and order per group on
partition queues with a single active consumer each. Modules: `url.py` (the URL; the password
never leaves it), `layout.py` (broker queues of a port queue), `envelope.py` (headers),
`broker.py` (connection, publishing, provisioning), `standard.py` and `fifo.py` (the two kinds
of queue), `buffer.py` (FIFO rules over what a consumer holds), `dead.py` (dead letters).

How the port's semantics map (RabbitMQ has no visibility timeout: an unacked message stays
with the channel that got it until it is acked, rejected or the channel closes):
- receive: standard queues `basic.get`; FIFO queues a consumer per partition, whose messages
  are handed out from the process's buffer. Visibility runs out by a timer that rejects the
  message back (standard) or by the buffer making it visible again (FIFO);
  `extend_visibility` moves that deadline. Receipts are valid in the receiving process only.
- release(delay): standard queues re-publish to a wait queue of the delay's tier (rounded up);
  FIFO messages wait in the buffer with their group locked. The reason rides in a header into
  the DLQ; `count=False` takes the receive back (a header, or the buffer's count).
- depth: ready counts from passive declares (queue, partitions, wait queues, DLQ) plus what
  this process holds; messages held unacked by other processes are not counted.
- de-duplication ids hold within one process for five minutes (no plugin: consumers must be
  idempotent across processes); `delete` reaches ready messages and this process's own.
Queues must exist: `create_queues` (`wacloud queues create`) declares them; a process that
finds one missing raises `QueueMissing` naming it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wacloud.adapters.queue.rabbitmq.broker import RabbitBroker
from wacloud.adapters.queue.rabbitmq.url import parse_address

if TYPE_CHECKING:
    from wacloud.adapters.media.base import MediaStore
    from wacloud.settings import Settings

__all__ = ["RabbitBroker", "open_broker"]


def open_broker(url: str, settings: Settings, media_store: MediaStore | None = None
                ) -> RabbitBroker:
    """The broker of an amqp(s) URL; bodies travel whole (RabbitMQ takes up to 128 MB), so no
    media store."""
    return RabbitBroker(parse_address(url))
