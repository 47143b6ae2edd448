"""What a queue of the port is made of on RabbitMQ: names, arguments, delay tiers, partitions.

For a port queue NAME (broker names carry the URL's prefix, see `BrokerAddress.name`):
- standard: `NAME`, a quorum queue with `x-delivery-limit` and NAME.dlq as its dead-letter
  target; `NAME.wait.<ms>`, one durable classic queue per delay tier whose queue-level TTL
  dead-letters back into NAME (no plugin; one TTL per queue, so no head-of-line blocking);
- FIFO: `NAME.p0` ... `NAME.p<N-1>`, quorum queues with `x-single-active-consumer`: a group is
  hashed onto one of them, so one consumer at a time receives it, in order; and
  `NAME.consumers`, a classic auto-delete queue that never holds a message: every process
  consuming the partitions consumes it too, so its consumer count is how many they are (a
  quorum queue counts only its active consumer; see `spread.py`). The processes declare it
  themselves (it goes away with the last of them), not `create_queues`;
- both: `NAME.dlq`, a durable classic queue (see `declarations`).
"""

from __future__ import annotations

import bisect
import zlib
from dataclasses import dataclass
from typing import Any

from wacloud.adapters.queue.base import QueueSpec

# Delays are rounded UP to the next tier (a retry never comes back earlier than asked); past
# the last tier a message waits the last tier's time.
DELAY_TIERS_MS: tuple[int, ...] = (100, 250, 500, 1_000, 2_000, 5_000, 15_000, 30_000, 60_000,
                                   120_000, 300_000, 900_000, 1_800_000, 3_600_000,
                                   10_800_000, 43_200_000, 86_400_000)


def delay_tier_ms(delay: float) -> int:
    """The tier a delay of `delay` seconds waits in: the smallest one not shorter."""
    wanted = max(delay, 0.0) * 1000
    index = bisect.bisect_left(DELAY_TIERS_MS, wanted)
    return DELAY_TIERS_MS[min(index, len(DELAY_TIERS_MS) - 1)]


def partition_of(group_id: str | None, partitions: int) -> int:
    """The partition a group's messages go to: CRC-32 of the group id, stable across processes
    and Python versions (the built-in `hash` of a str is salted per process)."""
    return zlib.crc32((group_id or "").encode()) % partitions


@dataclass(frozen=True, slots=True)
class Declaration:
    """One broker queue to declare: its name, its arguments, and whether it is quorum."""

    name: str
    arguments: dict[str, Any]

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"


@dataclass(frozen=True, slots=True)
class Layout:
    """The broker queues of one port queue (`spec`), named with `prefix`."""

    spec: QueueSpec
    prefix: str
    partitions: int

    def name(self, logical: str) -> str:
        return f"{self.prefix}.{logical}" if self.prefix else logical

    @property
    def main(self) -> str:
        return self.name(self.spec.name)

    @property
    def dead(self) -> str:
        return self.name(self.spec.dead_letter_name)

    def wait(self, tier_ms: int) -> str:
        return self.name(f"{self.spec.name}.wait.{tier_ms}")

    @property
    def waits(self) -> list[str]:
        return [self.wait(tier) for tier in DELAY_TIERS_MS]

    def partition(self, index: int) -> str:
        return self.name(f"{self.spec.name}.p{index}")

    @property
    def partition_names(self) -> list[str]:
        return [self.partition(i) for i in range(self.partitions)]

    @property
    def roll_call(self) -> str:
        """The queue whose consumers are the processes consuming a FIFO queue's partitions."""
        return self.name(f"{self.spec.name}.consumers")

    def partition_for(self, group_id: str | None) -> str:
        return self.partition(partition_of(group_id, self.partitions))

    @property
    def receive_from(self) -> list[str]:
        """The queues messages are received from (and counted as visible)."""
        return self.partition_names if self.spec.fifo else [self.main]

    def declarations(self) -> list[Declaration]:
        """Every queue this port queue needs, the work queues first."""
        work = {"x-queue-type": "quorum", "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self.dead,
                # A limit of N lets the broker deliver N + 1 times: the receive that would be
                # one too many dead-letters the message itself (with its reason); the limit is
                # the safety net for consumers that keep crashing with it unacked.
                "x-delivery-limit": self.spec.max_receives}
        out: list[Declaration] = []
        if self.spec.fifo:
            out += [Declaration(name, {**work, "x-single-active-consumer": True})
                    for name in self.partition_names]
        else:
            out.append(Declaration(self.main, work))
            # Delayed sends and releases of a standard queue wait here; FIFO releases wait
            # in their consumer (see fifo.py), where their group stays locked behind them.
            out += [Declaration(self.wait(tier), {
                "x-queue-type": "classic", "x-message-ttl": tier,
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.main})
                for tier in DELAY_TIERS_MS]
        out.append(Declaration(self.dead, self.dead_arguments()))
        return out

    @staticmethod
    def dead_arguments() -> dict[str, Any]:
        """Dead letters are peeked at (taken and given back) by `wacloud dlq`: a classic
        queue puts them back in place at once and counts no deliveries (a quorum queue would
        count each peek as one, and give them back asynchronously). Durable, its messages
        persistent. Not for receiving from: without delivery counts, visibility timeouts
        would not bring a message nearer a DLQ of its own."""
        return {"x-queue-type": "classic"}
