"""Spreading a FIFO queue's partitions over processes on RabbitMQ (`spread.py`): the policy on
its own, then two real consumers on the machine's RabbitMQ (a fresh virtual host): a child
process that subscribes first and this test's process. The child hands half of the partitions
over; order per group holds across the hand-over (nothing of a group is received before its
previous message was acked, whoever held it); killed with SIGKILL, the child's partitions come
to this process within a bounded time, and nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

from wacloud.adapters.queue.base import OutgoingMessage, QueueSpec, ReceivedMessage
from wacloud.adapters.queue.rabbitmq import RabbitBroker
from wacloud.adapters.queue.rabbitmq.layout import partition_of
from wacloud.adapters.queue.rabbitmq.spread import (
    COME_BACK_S,
    DRAIN_MAX_S,
    LOOK_EVERY_S,
    Spread,
    fair_share,
    to_give_up,
)
from wacloud.adapters.queue.rabbitmq.url import parse_address

# ----------------------------------------------------------------------------------- policy


def test_fair_share_and_the_cheapest_partitions_are_given_up() -> None:
    assert [fair_share(4, n) for n in (0, 1, 2, 3, 4, 5)] == [4, 4, 2, 2, 1, 1]
    held, handed_out = [10, 0, 5, 3], [1, 0, 0, 0]
    assert to_give_up({0, 1, 2, 3}, 2, 4, held, handed_out) == [1, 3]
    assert to_give_up({0, 1}, 2, 4, held, handed_out) == []
    assert to_give_up({0, 1, 2, 3}, 1, 4, held, handed_out) == []


def test_a_pause_waits_for_what_is_in_flight_and_gives_up_when_it_takes_long() -> None:
    spread = Spread(4, consumers=2)
    for index in range(4):
        spread.delivered(index, 0.0)
    # Partitions 0 and 1 have messages out: 2 and 3 are paused and handed over at once.
    assert spread.look(0.0, [5, 5, 5, 5], [1, 1, 0, 0]) == [2, 3]
    for index in (2, 3):
        spread.lost(index)
        spread.gave(index, 0.0)
    assert spread.look(LOOK_EVERY_S, [5, 5, 0, 0], [1, 1, 0, 0]) == []  # at its share
    spread.consumers = 4  # two more processes: a share of 1
    assert spread.look(2 * LOOK_EVERY_S, [5, 5, 0, 0], [1, 2, 0, 0]) == []  # 0 paused, busy
    assert spread.frozen() == {0}
    # Still busy after DRAIN_MAX_S: resumed; the next look tries again.
    assert spread.look(2 * LOOK_EVERY_S + DRAIN_MAX_S + 0.1, [5, 5, 0, 0], [1, 2, 0, 0]) == []
    assert spread.frozen() == {0}  # paused again at once (a look was due): the cheapest one
    assert spread.look(2 * LOOK_EVERY_S + DRAIN_MAX_S + 0.2, [5, 5, 0, 0], [0, 2, 0, 0]) == [0]


def test_a_partition_that_comes_back_makes_the_process_look_less_often() -> None:
    spread = Spread(2, consumers=2)
    spread.delivered(0, 0.0)
    spread.delivered(1, 0.0)
    assert spread.look(0.0, [0, 0], [0, 0]) == [0]
    spread.lost(0)
    spread.gave(0, 0.0)
    spread.delivered(0, 1.0)  # nobody took it (the other consumer was gone meanwhile)
    assert spread.every == 2 * LOOK_EVERY_S
    assert spread.look(1.5, [0, 0], [0, 0]) == []  # not before 1.0 + 2 * LOOK_EVERY_S
    spread.consumers = 1
    assert spread.look(1.0 + 2 * LOOK_EVERY_S, [0, 0], [0, 0]) == []
    assert spread.every == LOOK_EVERY_S  # at its share: back to the usual pace
    spread.delivered(0, COME_BACK_S + 5)  # already active: nothing changes
    assert spread.every == LOOK_EVERY_S


# ------------------------------------------------------------------------- two real consumers

CHILD = r"""
import asyncio, sys, time
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.rabbitmq import RabbitBroker
from wacloud.adapters.queue.rabbitmq.url import parse_address

async def main(url, name):
    broker = RabbitBroker(parse_address(url))
    queue = broker.queue(QueueSpec(name, fifo=True, visibility_timeout=60))
    await queue.receive(1)  # consuming every partition from here on
    print("ready", flush=True)

    async def handle(group):  # a group's messages one after the other
        for m in group:
            await asyncio.sleep(0.1)  # the work: longer than the pace of the load
            print("ack", m.group_id, m.body.decode(), time.time(), flush=True)
            await queue.ack([m.receipt])

    working = set()
    while True:  # as the stage runner does: receives go on while messages are handled
        got = await queue.receive(10, wait_seconds=0.2)
        now = time.time()
        groups = {}
        for m in got:
            print("recv", m.group_id, m.body.decode(), now, flush=True)
            groups.setdefault(m.group_id, []).append(m)
        for group in groups.values():
            task = asyncio.create_task(handle(group))
            working.add(task)
            task.add_done_callback(working.discard)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

PARTITIONS = 4
GROUPS_PER_PARTITION = 4
# As the child's: a message is handled in as long as a round of sends takes, so that every
# partition has messages out when it is handed over (which must wait for them).
WORK_S = 0.1


@dataclass
class Log:
    """What each consumer received and acked: (who, group, n, time.time())."""

    events: list[tuple[str, str, str, int, float]] = field(default_factory=list)

    def add(self, who: str, kind: str, group: str, n: int, at: float) -> None:
        self.events.append((who, kind, group, n, at))

    def partitions(self, who: str, since: float) -> set[int]:
        return {partition_of(g, PARTITIONS) for w, k, g, _, t in self.events
                if w == who and k == "recv" and t >= since}

    def first(self, kind: str) -> dict[tuple[str, int], float]:
        out: dict[tuple[str, int], float] = {}
        for _, k, g, n, t in sorted(self.events, key=lambda e: e[4]):
            if k == kind:
                out.setdefault((g, n), t)
        return out


def groups() -> list[str]:
    """GROUPS_PER_PARTITION group ids in each partition."""
    found: dict[int, list[str]] = defaultdict(list)
    k = 0
    while min((len(found[p]) for p in range(PARTITIONS)), default=0) < GROUPS_PER_PARTITION:
        group = f"t/n/{k}"
        k += 1
        if len(found[partition_of(group, PARTITIONS)]) < GROUPS_PER_PARTITION:
            found[partition_of(group, PARTITIONS)].append(group)
    return [g for p in range(PARTITIONS) for g in found[p]]


async def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.05)  # a poll period


async def test_two_processes_share_the_partitions_in_order_and_survive_a_kill(
        rabbitmq_url: str) -> None:
    url = f"{rabbitmq_url}?partitions={PARTITIONS}&prefix=t"
    spec = QueueSpec("sends", fifo=True, visibility_timeout=60)
    mine = RabbitBroker(parse_address(url))
    await mine.create_queues([spec])
    queue = mine.queue(spec)
    log = Log()
    ids = groups()
    sent: list[tuple[str, int]] = []
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, url, spec.name, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdout is not None
    stop, stop_sending = asyncio.Event(), asyncio.Event()

    async def read_child() -> None:
        assert child.stdout is not None
        async for raw in child.stdout:
            kind, *rest = raw.decode().split()
            if kind in ("recv", "ack"):
                log.add("child", kind, rest[0], int(rest[1]), float(rest[2]))

    async def handle(group: list[ReceivedMessage]) -> None:
        for m in group:  # one after the other, as the stage runner does
            await asyncio.sleep(WORK_S)  # the work
            log.add("me", "ack", m.group_id or "", int(m.body), time.time())
            await queue.ack([m.receipt])

    async def consume() -> None:
        working: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            got = await queue.receive(10, wait_seconds=0.2)
            now = time.time()
            groups: dict[str, list[ReceivedMessage]] = defaultdict(list)
            for m in got:
                log.add("me", "recv", m.group_id or "", int(m.body), now)
                groups[m.group_id or ""].append(m)
            for group in groups.values():
                task = asyncio.create_task(handle(group))
                working.add(task)
                task.add_done_callback(working.discard)
        await asyncio.gather(*working)

    async def produce(rounds: list[int]) -> None:
        while not stop_sending.is_set():
            n = rounds[0]
            await queue.send_batch([OutgoingMessage(str(n).encode(), group_id=g) for g in ids])
            sent.extend((g, n) for g in ids)
            rounds[0] += 1
            await asyncio.sleep(0.1)  # the pace of the load

    tasks: list[asyncio.Task[None]] = []
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 60)
        assert line.strip() == b"ready", line
        tasks.append(asyncio.create_task(read_child()))
        await queue.receive(1)  # consuming too, behind the child on every partition
        tasks.append(asyncio.create_task(consume()))
        producing = asyncio.create_task(produce([0]))
        tasks.append(producing)

        # The child was the active consumer of every partition: it hands half over.
        await wait_until(lambda: len(log.partitions("me", 0)) >= 2, 20, "a hand-over")
        spread_at = time.time()
        await asyncio.sleep(1.0)  # a second of load once spread
        assert log.partitions("me", spread_at) | log.partitions("child", spread_at) == {
            0, 1, 2, 3}
        assert len(log.partitions("me", spread_at)) == 2
        assert not log.partitions("me", spread_at) & log.partitions("child", spread_at)

        # The child dies holding messages: this process takes all of it over.
        theirs = log.partitions("child", spread_at)
        child.send_signal(signal.SIGKILL)
        killed_at = time.time()
        await child.wait()
        await wait_until(lambda: log.partitions("me", killed_at) >= theirs, 10,
                         "the dead consumer's partitions taken over")
        took = max(min(t for w, k, g, _, t in log.events if w == "me" and k == "recv"
                       and t >= killed_at and partition_of(g, PARTITIONS) == p)
                   for p in theirs) - killed_at
        await asyncio.sleep(0.5)  # a little more load, all of it here
        stop_sending.set()
        await producing
        await wait_until(lambda: set(log.first("ack")) >= set(sent), 20, "everything acked")
    finally:
        stop.set()
        stop_sending.set()
        if child.returncode is None:
            child.kill()
            await child.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await mine.close()
    assert took < 5, f"the takeover took {took:.1f} s"

    # Nothing lost; a message acked twice is one the child had received before its death. A
    # hand-over gives nothing that was handed out: both received a message only at the kill.
    acked = [(g, n) for w, k, g, n, _ in log.events if k == "ack"]
    assert set(acked) == set(sent)
    twice = {m for m in acked if acked.count(m) > 1}
    child_got = {(g, n) for w, k, g, n, _ in log.events if w == "child" and k == "recv"}
    assert twice <= child_got and len(twice) <= 10
    mine_at = {(g, n): t for w, k, g, n, t in log.events if w == "me" and k == "recv"}
    assert all(mine_at[m] >= killed_at for m in child_got & set(mine_at)), "received twice"
    # Order per group across both processes: a message is received only after the one before
    # it in its group was acked (by whichever process held it), or behind it in one receive.
    first_ack = log.first("ack")
    receives = {(w, g, n, t) for w, k, g, n, t in log.events if k == "recv"}
    for who, group, n, at in receives:
        if n > 0:
            in_order = first_ack[(group, n - 1)] < at or (who, group, n - 1, at) in receives
            assert in_order, (who, group, n)
    print(f"{len(sent)} messages; takeover after the kill in {took:.2f} s; "
          f"{len(twice)} received again")
