"""Spreading a FIFO queue's partitions over the processes that consume it.

Every process consumes every partition of a FIFO queue, and RabbitMQ (3.10's quorum queues)
makes the consumer that subscribed first the single active one of each partition: left alone,
the first process would be active on all of them and the others would only stand by. So each
process counts the partitions it is the active consumer of (those its current consumer got a
delivery from: a consumer stays active until it goes away), and the processes consuming the
queue: each also consumes the queue's roll call (`Layout.roll_call`, a classic queue that
never holds a message), whose consumer count a passive declare returns (a quorum queue's
counts only its active consumer). One that is active on more than its fair share,
ceil(partitions / processes), hands the excess over, one partition at a time:

1. it pauses the partition: nothing more of it is handed out;
2. once nothing of it is handed out (the stage acked or released what it had), it closes the
   partition's channel: the broker gives back what the channel held, unacked, in order, and
   in the same step makes the next waiting consumer (another process) the active one, which
   then receives those first, then the rest of the partition;
3. it subscribes again, behind the others, as a stand-by.

Why this keeps the guarantees: a partition always has exactly one active consumer (the broker
decides, and a process only ever gives a partition up, never takes one), and nothing of it is
in flight at the hand-over, so a group's next message is received only after its earlier ones
were acked. Every process keeps a consumer on every partition, so when one dies (SIGKILL:
its connection closes) the broker hands its partitions to the others at once, unacked
messages first, as before; they then hold more than their share, which they give back when a
process joins. Nothing here is stored or voted on: a process that gives a partition to a
process that is gone meanwhile simply gets it back (and looks less often for a while). A
process that cannot consume the roll call (no permission to declare it) counts itself alone
and spreads nothing: every partition is still consumed, by whoever came first.

Costs: the messages the process held of the partition (prefetched, or waiting out a release's
delay) count one delivery each, as at a crash, and a release's remaining delay is not kept
(the next process receives them at once and its stage decides again). A hand-over happens
when processes join or leave, not in a steady state: shares only shrink when consumers are
added. A partition that cannot be drained within `DRAIN_MAX_S` (a send that takes long) is
resumed, and another one is tried at the next look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

LOOK_EVERY_S = 1.0  # how often a process compares what it is active on with its share
LOOK_MAX_S = 60.0  # ... at the least, when partitions it gives up keep coming back
COME_BACK_S = 10.0  # a partition back this soon after its hand-over found no taker
DRAIN_MAX_S = 5.0  # how long a paused partition may wait for what is in flight


def fair_share(partitions: int, consumers: int) -> int:
    """The most partitions one of `consumers` processes should be the active consumer of."""
    return math.ceil(partitions / max(consumers, 1))


def to_give_up(active: set[int], consumers: int, partitions: int, held: list[int],
               handed_out: list[int]) -> list[int]:
    """Which of the `active` partitions to hand over to bring this process to its share: the
    cheapest first (fewest messages handed out, then fewest held)."""
    excess = len(active) - fair_share(partitions, consumers)
    if excess <= 0:
        return []
    return sorted(active, key=lambda i: (handed_out[i], held[i], i))[:excess]


@dataclass
class Spread:
    """One process's side of the spreading of one FIFO queue: what it is active on, what it
    is handing over (paused), and when it looks again."""

    partitions: int
    active: set[int] = field(default_factory=set)  # a delivery came from our current consumer
    paused: dict[int, float] = field(default_factory=dict)  # being handed over, since when
    consumers: int = 1
    next_look: float = 0.0
    every: float = LOOK_EVERY_S
    given: dict[int, float] = field(default_factory=dict)  # handed over, when

    def delivered(self, index: int, now: float) -> None:
        if index in self.active:
            return
        self.active.add(index)
        if now - self.given.pop(index, -COME_BACK_S) < COME_BACK_S:
            # No other consumer took it (the count was stale, or one cannot take it): look
            # less often, so that messages are not handed back and forth.
            self.every = min(self.every * 2, LOOK_MAX_S)
            self.next_look = now + self.every

    def due(self, now: float) -> bool:
        return now >= self.next_look

    def lost(self, index: int) -> None:
        """Our consumer of `index` is gone (handed over, or its channel closed)."""
        self.active.discard(index)
        self.paused.pop(index, None)

    def gave(self, index: int, now: float) -> None:
        self.given[index] = now

    def look(self, now: float, held: list[int], handed_out: list[int]) -> list[int]:
        """The paused partitions to hand over now (nothing of them handed out); pauses what
        is above the share (at most every LOOK_EVERY_S), resumes pauses that took too long."""
        for index, since in list(self.paused.items()):
            if handed_out[index] and now - since > DRAIN_MAX_S:
                del self.paused[index]  # something in flight takes long: try another later
        if now >= self.next_look:
            self.next_look = now + self.every
            keep = self.active - set(self.paused)
            chosen = to_give_up(keep, self.consumers, self.partitions, held, handed_out)
            if not chosen and not self.paused:
                self.every = LOOK_EVERY_S  # at its share
            for index in chosen:
                self.paused[index] = now
        return [i for i in self.paused if not handed_out[i]]

    def frozen(self) -> frozenset[int]:
        return frozenset(self.paused)
