"""The queue port: the small SQS-shaped interface every stage talks to.

Semantics (the same for the SQLite and SQS implementations):
- `send` is durable when it returns. FIFO queues take a group id (messages of one group are
  received in order, and none is received while an earlier one of its group is in flight) and a
  de-duplication id (a second send with the same id while the first is still queued is a no-op).
  FIFO receives take turns between lanes (a group id's lane is what precedes its last "/", e.g.
  tenant/channel for tenant/channel/recipient): a lane with a long backlog never holds back the
  messages of another, and a group queued behind its in-flight head is never scanned.
- `receive` hides the messages it returns for `visibility_timeout` seconds and counts receives.
  A message received more than `max_receives` times goes to the queue's dead-letter queue.
- `ack` deletes; `release` makes a message visible again after `delay` seconds (backoff),
  keeping `reason` (why it failed) with it; `count=False` gives the receive back, for failures
  that are not the message's (its database is down): they must not bring it nearer the DLQ.
- `extend_visibility` keeps a received message hidden for `seconds` more from now (SQS's
  ChangeMessageVisibility): a worker still handling it heartbeats, so it is never handed out
  twice however long the work takes.
- `dead_letter` moves a received message to the dead-letter queue at once, with the reason.
- `redrive` moves dead letters back to the source queue; `discard` deletes them.
- `share_lanes` (FIFO queues of adapters that can): this consumer receives only the lanes of
  its share, so that consumers in several processes each own whole lanes.
"""

from __future__ import annotations

import abc
import zlib
from dataclasses import dataclass, field


@dataclass(slots=True)
class OutgoingMessage:
    body: bytes
    group_id: str | None = None
    dedup_id: str | None = None
    delay: float = 0.0


@dataclass(slots=True)
class ReceivedMessage:
    body: bytes
    receipt: str
    receive_count: int
    message_id: str
    group_id: str | None = None
    sent_at: float = 0.0
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class QueueSpec:
    """How a queue is declared: its name, whether it is FIFO, and its dead-letter policy."""

    name: str
    fifo: bool = False
    max_receives: int = 5
    visibility_timeout: float = 30.0

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dlq"


def lane_of(group_id: str | None) -> str:
    """A FIFO message's lane: what its group id has before the last "/" ("" if none)."""
    return (group_id or "").rpartition("/")[0]


@dataclass(frozen=True, slots=True)
class LaneShare:
    """Share `index` of `count` disjoint shares of a FIFO queue's lanes (for `outbound.send`,
    a lane is a sending number): consumers in several processes that each take one share own
    whole lanes, as the send stage needs (a number's rate limit is counted in one process)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"share {self.index}/{self.count}: INDEX must be in 0..COUNT-1")

    @classmethod
    def parse(cls, text: str) -> LaneShare:
        """`INDEX/COUNT`, e.g. `1/2`."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"lane share {text!r}: expected INDEX/COUNT, e.g. 1/2")
        return cls(int(index), int(count))

    def owns(self, lane: str) -> bool:
        return zlib.crc32(lane.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class Queue(abc.ABC):
    """One named queue."""

    spec: QueueSpec

    async def send(self, body: bytes, *, group_id: str | None = None,
                   dedup_id: str | None = None, delay: float = 0.0) -> None:
        """One message: a batch of one (every adapter's `send_batch` has the semantics)."""
        await self.send_batch([OutgoingMessage(body, group_id, dedup_id, delay)])

    @abc.abstractmethod
    async def send_batch(self, messages: list[OutgoingMessage]) -> None: ...

    @abc.abstractmethod
    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]: ...

    @abc.abstractmethod
    async def ack(self, receipts: list[str]) -> None: ...

    @abc.abstractmethod
    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None: ...

    @abc.abstractmethod
    async def dead_letter(self, receipt: str, reason: str) -> None:
        """Move a received message to the dead-letter queue now, keeping `reason`."""

    @abc.abstractmethod
    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        """Hide the message of `receipt` until `seconds` from now; False if that receipt no
        longer holds it (acked, released, or its visibility ran out and it was received
        again)."""

    @abc.abstractmethod
    async def depth(self) -> dict[str, int]:
        """Counts: `visible`, `in_flight`, `delayed`, `dead` (in the dead-letter queue)."""

    async def lag_seconds(self) -> float | None:
        """Seconds since the oldest visible message (ready to be received) became visible: how
        far behind the queue's stage is. None when nothing is visible, or when the
        implementation cannot tell (this default)."""
        return None

    async def has_waiting(self, longer_than: float = 0.0) -> bool:
        """Whether a message has been ready to be received for more than `longer_than` seconds
        (may be approximate; cheap to ask). This default ignores how long."""
        return (await self.depth())["visible"] > 0

    @abc.abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        """Peek at the dead-letter queue without changing it. `attributes` carry
        `source_queue`, `reason` (of the last failure, may be empty) and `size` (body bytes)."""

    @abc.abstractmethod
    async def redrive(self, message_ids: list[str] | None = None) -> int:
        """Move dead letters (all, or the given ids) back to this queue; returns how many."""

    async def oldest_age(self) -> float | None:
        """Seconds since the oldest message still in this queue was sent (any state, dead
        letters apart), or None when it is empty: a queue whose oldest message keeps ageing is
        stuck. This default does not know."""
        return None

    async def dead_count(self) -> int:
        """How many messages wait in the dead-letter queue (for /readyz and /metrics)."""
        return (await self.depth())["dead"]

    def share_lanes(self, share: LaneShare | None) -> bool:
        """From the next receive on, receive only the lanes `share` owns (None: every lane).
        False when this queue cannot (not FIFO, or an adapter whose broker assigns groups to
        consumers itself): then one consumer must not assume it owns whole lanes."""
        return False

    def count_dead(self) -> int | None:
        """The dead-letter count without awaiting, cheap enough for every /metrics scrape, or
        None when the backend cannot tell that way (this default; /metrics then omits it)."""
        return None

    @abc.abstractmethod
    async def discard(self, message_ids: list[str] | None = None) -> int:
        """Delete dead letters (all, or the given ids); returns how many."""

    async def delete(self, message_ids: list[str]) -> int:
        """Delete messages of this queue or its DLQ by id, in any state (LGPD erasure);
        returns how many were there. Not abstract: SQS can only delete what it handed out."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete by message id")


class QueueMissing(RuntimeError):
    """A queue the process needs does not exist on the broker; the message says which and how
    to create it (`wacloud queues create`)."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"queue {name!r} does not exist on {where}: "
                         "create the queues with `wacloud queues create`")
        self.name = name


class QueueBroker(abc.ABC):
    """Creates queues and closes their connections."""

    @abc.abstractmethod
    def queue(self, spec: QueueSpec) -> Queue:
        """The queue of `spec`. A broker whose queues are provisioned beforehand (SQS,
        RabbitMQ) raises `QueueMissing` here or at the queue's first use when it is absent."""

    async def create_queues(self, specs: list[QueueSpec]) -> list[str]:
        """Provision every queue of `specs` and its dead-letter queue, idempotently (a queue
        that exists with the same settings is left alone); returns the names provisioned.
        This default is for brokers that create queues on first use (SQLite)."""
        return [name for spec in specs for name in (spec.name, spec.dead_letter_name)]

    @abc.abstractmethod
    async def close(self) -> None: ...
