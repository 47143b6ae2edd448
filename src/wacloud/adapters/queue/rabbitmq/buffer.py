"""The messages a queue's consumer holds, by group, and the choice of what to hand out.

Pure bookkeeping, no I/O: a consumer is the only one that holds the messages delivered to it
(of a FIFO partition, the single active one), so the order of a group, its lock while its head
is in flight or backing off, visibility, receive counts and lanes are decided here with the
same rules as the embedded queue (see `sqlite_queue.py`): a group's head first; behind it the
rest of its group that is visible; heads taken lane by lane in turn (a lane is what a group id
has before its last "/"). In a standard queue every message is a group of its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wacloud.adapters.queue.rabbitmq.envelope import Envelope


def lane_of(group_id: str | None) -> str:
    return (group_id or "").rpartition("/")[0]


@dataclass(slots=True)
class Entry:
    """One held message. `received`: its receives so far (earlier copies' and this one's)."""

    envelope: Envelope
    handle: Any  # what acks it on the broker (an incoming message)
    partition: int
    seq: int  # arrival order in this buffer
    group: str  # its group id (FIFO), else its own message id: a group of one
    received: int = 0
    visible_at: float = 0.0
    receipt: str | None = None

    def key(self) -> tuple[int, int]:
        return (self.envelope.order, self.seq)


@dataclass
class GroupBuffer:
    grouped: bool = True  # False: a standard queue, every message a group of its own
    groups: dict[str, list[Entry]] = field(default_factory=dict)
    receipts: dict[str, Entry] = field(default_factory=dict)
    dedup: dict[str, Entry] = field(default_factory=dict)  # held messages by dedup id
    turn: int = 0
    _seq: int = 0

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups.values())

    def __iter__(self) -> Iterator[Entry]:
        for group in self.groups.values():
            yield from group

    def add(self, envelope: Envelope, handle: Any, partition: int, received: int,
            now: float, *, redriven: bool = False) -> Entry | None:
        """Hold a delivery; None (not held) when it has the de-duplication id of a message
        held already. Deliveries of a partition arrive in its order and are appended; a
        redriven message (sent to its group long ago) goes back before the later ones."""
        if envelope.dedup_id is not None and envelope.dedup_id in self.dedup:
            return None
        self._seq += 1
        # Ready since it was sent (as in the embedded queue), so that heads of different
        # partitions are served in the order they were sent, whichever arrived first.
        entry = Entry(envelope, handle, partition, self._seq,
                      (envelope.group_id or "") if self.grouped else envelope.message_id,
                      received, min(now, envelope.sent_at))
        group = self.groups.setdefault(entry.group, [])
        if redriven and group and envelope.order < group[-1].envelope.order:
            keys = [e.envelope.order for e in group]
            # Never in front of a head that is out (in flight or backing off).
            first = 1 if group[0].receipt is not None or group[0].visible_at > now else 0
            group.insert(max(bisect.bisect_right(keys, envelope.order), first), entry)
        else:
            group.append(entry)
        if envelope.dedup_id is not None:
            self.dedup[envelope.dedup_id] = entry
        return entry

    def remove(self, entry: Entry) -> None:
        group = self.groups.get(entry.group)
        if group is not None and entry in group:
            group.remove(entry)
            if not group:
                del self.groups[entry.group]
        if entry.receipt is not None:
            self.receipts.pop(entry.receipt, None)
        dedup_id = entry.envelope.dedup_id
        if dedup_id is not None and self.dedup.get(dedup_id) is entry:
            del self.dedup[dedup_id]

    def by_receipt(self, receipt: str) -> Entry | None:
        return self.receipts.get(receipt)

    def clear_partition(self, partition: int) -> None:
        """Forget what a partition's closed channel gave back to the broker."""
        for entry in [e for e in self if e.partition == partition]:
            self.remove(entry)

    def pick(self, limit: int, now: float, max_receives: int,
             paused: frozenset[int] = frozenset()) -> tuple[list[Entry], list[Entry]]:
        """What to hand out (heads in lane turns, each followed by the visible rest of its
        group) and heads to dead-letter (received `max_receives` times already). Nothing of
        the `paused` partitions (being handed over to another process)."""
        lanes: dict[str, list[str]] = {}
        for name, group in self.groups.items():
            if group[0].visible_at <= now and group[0].partition not in paused:
                lanes.setdefault(lane_of(group[0].envelope.group_id), []).append(name)
        if not lanes:
            return [], []
        order = sorted(lanes)
        turn = self.turn % len(order)
        order = order[turn:] + order[:turn]
        for names in lanes.values():
            names.sort(key=lambda n: (self.groups[n][0].visible_at,
                                      self.groups[n][0].envelope.order, self.groups[n][0].seq))
        live: list[Entry] = []
        dead: list[Entry] = []
        served = 0
        active = True
        while active and len(live) < limit:
            active = False
            for index, lane in enumerate(order):
                if len(live) >= limit:
                    break
                if not lanes[lane]:
                    continue
                active = True
                served = max(served, index)
                group = self.groups[lanes[lane].pop(0)]
                position = 0
                # Heads received max_receives times go; the next of the group is its head.
                while position < len(group) and group[position].received >= max_receives:
                    dead.append(group[position])
                    position += 1
                for entry in group[position:]:
                    if len(live) >= limit or entry.visible_at > now:
                        break
                    if entry.received >= max_receives:
                        break  # its turn to go to the DLQ comes when it is the head
                    live.append(entry)
        self.turn = turn + served + 1
        return live, dead

    def hand_out(self, entry: Entry, receipt: str, until: float) -> None:
        if entry.receipt is not None:
            self.receipts.pop(entry.receipt, None)
        entry.receipt = receipt
        entry.received += 1
        entry.visible_at = until
        self.receipts[receipt] = entry

    def by_partition(self, partitions: int) -> tuple[list[int], list[int]]:
        """(held, handed out) per partition: handed out means received and not yet acked,
        released or dead-lettered (its visibility may have run out meanwhile)."""
        held, out = [0] * partitions, [0] * partitions
        for entry in self:
            held[entry.partition] += 1
            out[entry.partition] += entry.receipt is not None
        return held, out

    def counts(self, now: float) -> tuple[int, int, int]:
        """(visible, in flight, delayed) of the held messages."""
        visible = in_flight = delayed = 0
        for entry in self:
            if entry.visible_at <= now:
                visible += 1
            elif entry.receipt is not None:
                in_flight += 1
            else:
                delayed += 1
        return visible, in_flight, delayed
