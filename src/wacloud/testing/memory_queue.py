"""A queue broker in memory, for fast tests of stages and hosts: the semantics of the queue
port (`adapters/queue/base.py`) without a file or a server, and it passes the same contract
suite (`tests/contract/test_queue_contract.py`).

Brokers opened on one `MemoryQueues` share its queues, as two processes share a queue file;
nothing outlives the Python process, so a send is "durable" only for as long as it runs. The
whole state changes only between awaits, on one event loop: no locks are needed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from wacloud.adapters.queue.base import (
    OutgoingMessage,
    Queue,
    QueueBroker,
    QueueSpec,
    ReceivedMessage,
)

POLL_S = 0.01  # how often a long poll looks again (messages may become visible by time alone)


@dataclass(slots=True)
class Stored:
    body: bytes
    message_id: str
    seq: int
    sent_at: float
    visible_at: float
    group_id: str | None = None
    dedup_id: str | None = None
    receive_count: int = 0
    receipt: str | None = None  # set while a receiver holds it
    reason: str = ""
    source: str = ""  # in a dead-letter queue: the queue it came from

    def lane(self) -> str:
        group = self.group_id if self.group_id is not None else self.message_id
        return group.rpartition("/")[0]


@dataclass
class MemoryQueues:
    """The shared place: every queue by name (a dead-letter queue is `NAME.dlq`)."""

    messages: dict[str, dict[str, Stored]] = field(default_factory=dict)
    last_lane: dict[str, str] = field(default_factory=dict)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def of(self, name: str) -> dict[str, Stored]:
        return self.messages.setdefault(name, {})


class MemoryQueue(Queue):
    def __init__(self, place: MemoryQueues, spec: QueueSpec) -> None:
        self.place = place
        self.spec = spec

    @property
    def _live(self) -> dict[str, Stored]:
        return self.place.of(self.spec.name)

    @property
    def _dead(self) -> dict[str, Stored]:
        return self.place.of(self.spec.dead_letter_name)

    def _held(self, receipt: str) -> Stored | None:
        return next((m for m in self._live.values() if m.receipt == receipt), None)

    async def send_batch(self, messages: list[OutgoingMessage]) -> None:
        now = time.time()
        for message in messages:
            if message.dedup_id is not None and any(
                    m.dedup_id == message.dedup_id for m in self._live.values()):
                continue  # the first copy is still queued
            stored = Stored(message.body, uuid.uuid4().hex, next(self.place.counter), now,
                            now + message.delay, message.group_id, message.dedup_id)
            self._live[stored.message_id] = stored

    def _sweep(self, now: float) -> None:
        """Move what is visible again after its last allowed receive to the DLQ."""
        for message in list(self._live.values()):
            if message.visible_at <= now and message.receive_count >= self.spec.max_receives:
                self._bury(message)

    def _bury(self, message: Stored) -> None:
        del self._live[message.message_id]
        message.receipt = None
        message.source = self.spec.name
        self._dead[message.message_id] = message

    def _candidates(self, now: float) -> list[Stored]:
        ordered = sorted(self._live.values(), key=lambda m: m.seq)
        if not self.spec.fifo:
            return [m for m in ordered if m.visible_at <= now]
        # A group gives its messages in order, up to the first one not visible: nothing of
        # a group is handed out while an earlier one is held or backing off.
        groups: dict[str, list[Stored]] = {}
        blocked: set[str] = set()
        for message in ordered:
            group = message.group_id if message.group_id is not None else message.message_id
            if group in blocked:
                continue
            if message.visible_at > now:
                blocked.add(group)
                continue
            groups.setdefault(group, []).append(message)
        lanes: dict[str, list[Stored]] = {}
        for group_messages in groups.values():
            lanes.setdefault(group_messages[0].lane(), []).extend(group_messages)
        # Lanes take turns, starting after the lane served last.
        names = sorted(lanes)
        last = self.place.last_lane.get(self.spec.name)
        start = next((i for i, name in enumerate(names) if last is not None and name > last), 0)
        turns = [iter(lanes[name]) for name in names[start:] + names[:start]]
        out: list[Stored] = []
        while turns:
            for turn in list(turns):
                taken = next(turn, None)
                if taken is None:
                    turns.remove(turn)
                else:
                    out.append(taken)
        return out

    async def receive(self, max_messages: int = 10, *, visibility_timeout: float | None = None,
                      wait_seconds: float = 0.0) -> list[ReceivedMessage]:
        hidden_for = self.spec.visibility_timeout if visibility_timeout is None \
            else visibility_timeout
        deadline = time.monotonic() + wait_seconds
        # Give way first, as a receive over a connection does: receivers take turns.
        await asyncio.sleep(0)
        while True:
            now = time.time()
            self._sweep(now)
            chosen = self._candidates(now)[:max_messages]
            if chosen or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
        if self.spec.fifo and chosen:
            self.place.last_lane[self.spec.name] = chosen[-1].lane()
        out = []
        for message in chosen:
            message.receive_count += 1
            message.receipt = uuid.uuid4().hex
            message.visible_at = now + hidden_for
            out.append(ReceivedMessage(message.body, message.receipt, message.receive_count,
                                       message.message_id, message.group_id, message.sent_at))
        return out

    async def ack(self, receipts: list[str]) -> None:
        for receipt in receipts:
            message = self._held(receipt)
            if message is not None:
                del self._live[message.message_id]

    async def release(self, receipt: str, delay: float = 0.0, *, reason: str | None = None,
                      count: bool = True) -> None:
        message = self._held(receipt)
        if message is None:
            return  # a stale receipt: someone else holds it now
        message.receipt = None
        message.visible_at = time.time() + delay
        if reason is not None:
            message.reason = reason
        if not count:
            message.receive_count -= 1

    async def dead_letter(self, receipt: str, reason: str) -> None:
        message = self._held(receipt)
        if message is not None:
            message.reason = reason
            self._bury(message)

    async def extend_visibility(self, receipt: str, seconds: float) -> bool:
        message = self._held(receipt)
        if message is None:
            return False
        message.visible_at = time.time() + seconds
        return True

    async def depth(self) -> dict[str, int]:
        now = time.time()
        self._sweep(now)
        counts = {"visible": 0, "in_flight": 0, "delayed": 0, "dead": len(self._dead)}
        for message in self._live.values():
            state = ("visible" if message.visible_at <= now
                     else "in_flight" if message.receipt is not None else "delayed")
            counts[state] += 1
        return counts

    async def lag_seconds(self) -> float | None:
        now = time.time()
        ready = [now - m.visible_at for m in self._live.values() if m.visible_at <= now]
        return max(ready) if ready else None

    async def oldest_age(self) -> float | None:
        sent = [m.sent_at for m in self._live.values()]
        return time.time() - min(sent) if sent else None

    def count_dead(self) -> int | None:
        return len(self._dead)

    async def dead_letters(self, limit: int = 100) -> list[ReceivedMessage]:
        letters = sorted(self._dead.values(), key=lambda m: m.seq)[:limit]
        return [ReceivedMessage(m.body, "", m.receive_count, m.message_id, m.group_id,
                                m.sent_at, {"source_queue": m.source or self.spec.name,
                                            "reason": m.reason, "size": str(len(m.body))})
                for m in letters]

    def _chosen_letters(self, message_ids: list[str] | None) -> list[Stored]:
        return [m for m in list(self._dead.values())
                if message_ids is None or m.message_id in message_ids]

    async def redrive(self, message_ids: list[str] | None = None) -> int:
        letters = self._chosen_letters(message_ids)
        now = time.time()
        for message in letters:
            del self._dead[message.message_id]
            # A whole new budget; it keeps its place, so it heads its FIFO group again.
            message.receive_count, message.receipt, message.reason = 0, None, ""
            message.sent_at = message.visible_at = now
            self._live[message.message_id] = message
        return len(letters)

    async def discard(self, message_ids: list[str] | None = None) -> int:
        letters = self._chosen_letters(message_ids)
        for message in letters:
            del self._dead[message.message_id]
        return len(letters)

    async def delete(self, message_ids: list[str]) -> int:
        gone = 0
        for messages in (self._live, self._dead):
            for message_id in message_ids:
                if messages.pop(message_id, None) is not None:
                    gone += 1
        return gone


class MemoryQueueBroker(QueueBroker):
    """Queues in memory; brokers on one `MemoryQueues` see the same messages."""

    def __init__(self, place: MemoryQueues | None = None) -> None:
        self.place = place if place is not None else MemoryQueues()

    def queue(self, spec: QueueSpec) -> Queue:
        return MemoryQueue(self.place, spec)

    async def close(self) -> None:
        return None
