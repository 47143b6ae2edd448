"""The queue port on RabbitMQ (aio-pika): `amqp://USER:PW@HOST:PORT/VHOST?prefix=NAME`.

Durable quorum queues, publisher confirms (a send is durable when it returns), manual acks,
dead-letter queues fed after `max_receives` receives (`x-delivery-limit` as a safety net),
delayed retries without plugins (TTL wait queues that dead-letter back) and order per group on
partition queues with a single active consumer each, spread over the processes that consume
them. Modules: `url.py` (the URL; the password never leaves it), `layout.py` (broker queues of
a port queue), `envelope.py` (headers), `broker.py` (connection, publishing, provisioning),
`consumer.py` (receiving: the port's rules over what a consumer holds, with `buffer.py`),
`standard.py` and `fifo.py` (the two kinds of queue), `spread.py` (which process is the
active consumer of which partition), `dead.py` (dead letters, erasure).

How the port's semantics map (RabbitMQ has no visibility timeout: an unacked message stays
with the channel that got it until it is acked, rejected or the channel closes):
- receive: each process consumes its queues (manual acks, bounded prefetch) and hands out what
  it holds; visibility runs out, and `extend_visibility` moves it, in that process, which keeps
  the message unacked meanwhile (if it dies, the broker redelivers). Receipts are valid in the
  receiving process only.
- release(delay): standard queues re-publish to a wait queue of the delay's tier (rounded up)
  and ack; FIFO messages wait in the consumer with their group locked. The reason rides in a
  header into the DLQ; `count=False` takes the receive back.
- depth: ready counts from passive declares (queues, partitions, wait queues, DLQ) plus what
  this process holds; what other processes hold unacked is not counted.
- de-duplication ids: a copy delivered while the first is held unacked (still queued) by the
  consumer is dropped; `delete` reaches ready messages and this process's own.
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
