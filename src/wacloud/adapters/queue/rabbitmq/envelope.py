"""What travels with a message on RabbitMQ: the port's fields in AMQP headers, read back.

A message is re-published (never edited) when it waits, changes reason or moves to or from a
dead-letter queue, so everything the port keeps about it rides in its own headers: the source
queue, the group, when it was sent, how many receives earlier copies had, and the reason of the
last failure. The broker's `x-delivery-count` (absent at a first delivery) adds the receives of
the current copy; the AMQP `message_id` stays the same across copies.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from wacloud.adapters.queue.base import ReceivedMessage

QUEUE = "wacloud-queue"  # the port's name of the queue it was sent to
GROUP = "wacloud-group"
SENT_AT = "wacloud-sent-us"  # microseconds since the epoch (AMQP timestamps are whole seconds,
# and a float header travels as a 32-bit float)
RECEIVES = "wacloud-receives"  # receives of earlier copies
REASON = "wacloud-reason"
DEDUP = "wacloud-dedup"  # the sender's de-duplication id
ORDER = "wacloud-order"  # first send time in ns: where a redriven message belongs in its group
DELIVERY_COUNT = "x-delivery-count"
# Messages are kept with this much of the reason (an exception's text can be long).
REASON_MAX = 500


@dataclass(slots=True)
class Envelope:
    """A message's port fields, as sent or as read from a delivery."""

    body: bytes
    message_id: str
    queue: str
    group_id: str | None = None
    sent_at: float = 0.0
    receives: int = 0
    reason: str | None = None
    order: int = 0
    dedup_id: str | None = None

    @classmethod
    def new(cls, body: bytes, queue: str, group_id: str | None,
            dedup_id: str | None = None) -> Envelope:
        now = time.time()
        return cls(body=body, message_id=uuid.uuid4().hex, queue=queue, group_id=group_id,
                   sent_at=now, order=time.time_ns(), dedup_id=dedup_id)

    def headers(self) -> dict[str, Any]:
        out: dict[str, Any] = {QUEUE: self.queue, SENT_AT: round(self.sent_at * 1e6),
                               RECEIVES: self.receives, ORDER: self.order}
        if self.group_id is not None:
            out[GROUP] = self.group_id
        if self.reason:
            out[REASON] = self.reason[:REASON_MAX]
        if self.dedup_id is not None:
            out[DEDUP] = self.dedup_id
        return out

    def message(self) -> aio_pika.Message:
        return aio_pika.Message(self.body, headers=self.headers(), message_id=self.message_id,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

    def received(self, receipt: str, receive_count: int,
                 attributes: dict[str, str] | None = None) -> ReceivedMessage:
        return ReceivedMessage(body=self.body, receipt=receipt, receive_count=receive_count,
                               message_id=self.message_id, group_id=self.group_id,
                               sent_at=self.sent_at, attributes=attributes or {})


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def read(message: AbstractIncomingMessage, default_queue: str) -> tuple[Envelope, int]:
    """The envelope of a delivery and the broker's delivery count of this copy (0 at the
    first delivery, whose header is absent). A message published by something else than this
    adapter still reads: its id and time come from the AMQP properties when it has them."""
    headers = message.headers or {}
    sent_us = headers.get(SENT_AT)
    if isinstance(sent_us, int):
        sent_at = sent_us / 1e6
    else:
        stamp = message.timestamp
        sent_at = stamp.timestamp() if stamp is not None else time.time()
    receives = headers.get(RECEIVES)
    order = headers.get(ORDER)
    count = headers.get(DELIVERY_COUNT)
    envelope = Envelope(
        body=message.body,
        message_id=message.message_id or f"tag-{message.delivery_tag}",
        queue=_text(headers.get(QUEUE)) or default_queue,
        group_id=_text(headers.get(GROUP)),
        sent_at=float(sent_at),
        receives=receives if isinstance(receives, int) else 0,
        reason=_text(headers.get(REASON)),
        order=order if isinstance(order, int) else 0,
        dedup_id=_text(headers.get(DEDUP)))
    return envelope, count if isinstance(count, int) else 0


def died_at_limit(message: AbstractIncomingMessage) -> bool:
    """Whether the broker itself dead-lettered this message at its queue's delivery limit
    (consumers that kept closing with it unacked), not this adapter."""
    deaths = (message.headers or {}).get("x-death")
    if not isinstance(deaths, list):
        return False
    return any(isinstance(d, dict) and _text(d.get("reason")) == "delivery_limit"
               for d in deaths)
