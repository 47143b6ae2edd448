"""Contract for the queue port: every QueueBroker implementation must pass these.

To add a backend, add a param to `backend` that knows how to open brokers on one shared store
(two brokers stand in for two processes) and, if it can, how to start a child sender. The
in-memory broker of `wacloud.testing` passes it too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wacloud.adapters.queue.base import (
    OutgoingMessage,
    Queue,
    QueueBroker,
    QueueSpec,
    ReceivedMessage,
)
from wacloud.adapters.queue.sqlite.broker import SqliteBroker
from wacloud.adapters.queue.sqs import SqsBroker
from wacloud.adapters.queue.sqs.names import source_of
from wacloud.testing.memory_queue import MemoryQueueBroker, MemoryQueues

# Sends forever, 16 at a time, printing each body once its send has returned (is durable).
_SQLITE_CHILD = """
import asyncio, sys
from pathlib import Path
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.sqlite.broker import SqliteBroker

async def main() -> None:
    queue = SqliteBroker(Path(sys.argv[1])).queue(QueueSpec(sys.argv[2]))
    n = 0
    async def one(body: bytes) -> None:
        await queue.send(body)
        sys.stdout.write(body.decode() + "\\n")
        sys.stdout.flush()
    while True:
        await asyncio.gather(*(one(f"m{n + i}".encode()) for i in range(16)))
        n += 16

asyncio.run(main())
"""


# The same on RabbitMQ: the queue is declared at its first use (auto_create).
_RABBITMQ_CHILD = """
import asyncio, sys
from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.rabbitmq import RabbitBroker
from wacloud.adapters.queue.rabbitmq.url import parse_address

async def main() -> None:
    broker = RabbitBroker(parse_address(sys.argv[1]), auto_create=True)
    queue = broker.queue(QueueSpec(sys.argv[2]))
    n = 0
    async def one(body: bytes) -> None:
        await queue.send(body)
        sys.stdout.write(body.decode() + "\\n")
        sys.stdout.flush()
    while True:
        await asyncio.gather(*(one(f"m{n + i}".encode()) for i in range(16)))
        n += 16

asyncio.run(main())
"""


@dataclass
class Backend:
    name: str
    open: Callable[[], QueueBroker]  # a new broker (new connections) on the shared store
    child_sender: Callable[[str], list[str]] | None = None  # argv of a process sending forever
    # Where `depth` counts a message released with a delay: SQS counts it "not visible".
    released_state: str = "delayed"
    concurrent_messages: int = 500  # moto slows down as a queue grows: fewer there
    # What the backend cannot do, with the reason a test skipped for it gives.
    cannot: dict[str, str] = field(default_factory=dict)

    def require(self, feature: str) -> None:
        if feature in self.cannot:
            pytest.skip(f"{self.name}: {self.cannot[feature]}")


class ProvisionedSqsBroker(SqsBroker):
    """Creates each queue (and its DLQ) at its first `queue()`, as `wacloud queues create`
    does beforehand in a deployment."""

    def queue(self, spec: QueueSpec) -> Queue:
        if source_of(spec.name) is None:  # a DLQ named alone is created with its source
            self.provision([spec])
        return super().queue(spec)


SQS_CANNOT = {
    "child_sender": "a send is durable when SQS has answered; the child-sender crash test "
                    "measures this process, not SQS (and moto is too slow for its 300+ "
                    "messages)",
    "lanes": "SQS FIFO queues hand out the oldest message groups first: there are no lanes "
             "taking turns (fairness between numbers is by message group only)",
    "redrive_to_head": "a redrive re-sends the letter (SQS has no way to put a message before "
                       "others): it joins the back of its message group",
    "standard_dedup": "SQS standard queues have no de-duplication",
    "exclusive_receives": "SQS standard queues deliver at least once: now and then a message "
                          "is handed out twice (moto's server does so under concurrent "
                          "receives), which is why every stage is idempotent",
}


@pytest.fixture(params=["sqlite", "sqs", "rabbitmq", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        place = MemoryQueues()
        return Backend("memory", lambda: MemoryQueueBroker(place), cannot={
            "child_sender": "an in-memory queue lives only as long as its process"})
    if request.param == "sqlite":
        path = tmp_path / "queues.db"
        return Backend("sqlite", lambda: SqliteBroker(path),
                       lambda qname: [sys.executable, "-c", _SQLITE_CHILD, str(path), qname])
    if request.param == "rabbitmq":
        from wacloud.adapters.queue.rabbitmq import RabbitBroker
        from wacloud.adapters.queue.rabbitmq.url import parse_address

        # A fresh virtual host per test; queues are declared at their first use.
        url: str = request.getfixturevalue("rabbitmq_url")
        return Backend("rabbitmq", lambda: RabbitBroker(parse_address(url), auto_create=True),
                       lambda qname: [sys.executable, "-c", _RABBITMQ_CHILD, url, qname])
    if request.param == "sqs":
        request.getfixturevalue("aws_env")  # moto's server, through the standard variables
        prefix = f"wct{uuid.uuid4().hex[:8]}"
        return Backend("sqs", lambda: ProvisionedSqsBroker(prefix, tmp_dir=tmp_path / "tmp"),
                       released_state="in_flight", concurrent_messages=100,
                       cannot=SQS_CANNOT)
    raise AssertionError(request.param)


@pytest.fixture
async def broker(backend: Backend) -> AsyncIterator[QueueBroker]:
    opened = backend.open()
    yield opened
    await opened.close()


@pytest.fixture
def qname() -> str:
    return f"q{uuid.uuid4().hex[:12]}"  # unique, so shared backends (SQS) need no cleanup


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def drain(queue: Queue, *, ack: bool = True) -> list[ReceivedMessage]:
    out: list[ReceivedMessage] = []
    while batch := await queue.receive(10):
        out.extend(batch)
        if ack:
            await queue.ack([m.receipt for m in batch])
    return out


async def test_send_receive_ack(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    before = time.time()
    await queue.send(b"hello")
    [msg] = await queue.receive(10)
    assert msg.body == b"hello"
    assert msg.receive_count == 1
    assert isinstance(msg.message_id, str) and msg.message_id
    assert before - 1 <= msg.sent_at <= time.time() + 1
    assert await queue.receive(10) == []  # hidden while in flight
    await queue.ack([msg.receipt])
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    assert await queue.receive(10) == []


async def test_visibility_timeout_redelivers(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send(b"x")
    [first] = await queue.receive(1, visibility_timeout=0.2)
    [again] = await queue.receive(1, visibility_timeout=30, wait_seconds=5)
    assert again.message_id == first.message_id
    assert again.receive_count == 2
    assert again.receipt != first.receipt


async def test_stale_receipt_is_ignored(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send(b"x")
    [first] = await queue.receive(1, visibility_timeout=0.2)
    [second] = await queue.receive(1, visibility_timeout=30, wait_seconds=5)
    await queue.ack([first.receipt])
    await queue.release(first.receipt)
    assert (await queue.depth())["in_flight"] == 1
    await queue.ack([second.receipt])
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}


async def test_release_now_and_with_delay(backend: Backend, broker: QueueBroker,
                                          qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send(b"x")
    [msg] = await queue.receive(1)
    await queue.release(msg.receipt)
    [msg] = await queue.receive(1)
    assert msg.receive_count == 2
    released_at = time.monotonic()
    await queue.release(msg.receipt, delay=0.3)
    assert (await queue.depth())[backend.released_state] == 1
    assert await queue.receive(1) == []
    [msg] = await queue.receive(1, wait_seconds=5)
    assert time.monotonic() - released_at >= 0.25
    assert msg.receive_count == 3


async def test_delayed_send(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    sent_at = time.monotonic()
    await queue.send(b"later", delay=0.3)
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 1, "dead": 0}
    assert await queue.receive(1) == []
    [msg] = await queue.receive(1, wait_seconds=5)
    assert msg.body == b"later"
    assert time.monotonic() - sent_at >= 0.25


async def test_dead_letter_after_max_receives_and_redrive(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=2, visibility_timeout=0.1))
    await queue.send(b"poison")
    await queue.send(b"fine")
    counts = []

    async def dead() -> bool:
        for msg in await queue.receive(10):
            if msg.body == b"fine":
                await queue.ack([msg.receipt])
            else:
                counts.append(msg.receive_count)
        return (await queue.depth())["dead"] == 1

    await eventually(dead)
    assert counts == [1, 2]  # never handed out a third time
    [letter] = await queue.dead_letters()
    assert (letter.body, letter.receive_count) == (b"poison", 2)
    assert await queue.dead_letters() == [letter]  # peeking changes nothing
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 1}

    assert await queue.redrive() == 1
    assert (await queue.depth())["dead"] == 0
    [msg] = await queue.receive(1, visibility_timeout=30)
    assert (msg.body, msg.receive_count) == (b"poison", 1)


async def test_redrive_selected_ids(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=1, visibility_timeout=0.05))
    await queue.send_batch([OutgoingMessage(b"a"), OutgoingMessage(b"b")])
    await queue.receive(10)
    await eventually(lambda: _dead_count_is(queue, 2, receive=True))
    letters = await queue.dead_letters()
    chosen = next(m for m in letters if m.body == b"a")
    assert await queue.redrive([chosen.message_id]) == 1
    assert [m.body for m in await queue.dead_letters()] == [b"b"]
    [msg] = await queue.receive(10, visibility_timeout=30)
    assert msg.body == b"a"


async def _dead_count_is(queue: Queue, n: int, *, receive: bool) -> bool:
    if receive:
        assert await queue.receive(10) == []
    return (await queue.depth())["dead"] == n


async def test_fifo_order_per_group(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, fifo=True))
    for i in range(5):
        await queue.send(f"a{i}".encode(), group_id="a")
        await queue.send(f"b{i}".encode(), group_id="b")
    got = await drain(queue)
    assert [m.body for m in got if m.group_id == "a"] == [f"a{i}".encode() for i in range(5)]
    assert [m.body for m in got if m.group_id == "b"] == [f"b{i}".encode() for i in range(5)]


async def test_fifo_group_lock(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, fifo=True))
    await queue.send_batch([OutgoingMessage(b"a1", group_id="a"),
                            OutgoingMessage(b"a2", group_id="a"),
                            OutgoingMessage(b"b1", group_id="b"),
                            OutgoingMessage(b"a3", group_id="a")])
    [head] = await queue.receive(1)
    assert head.body == b"a1"
    assert [m.body for m in await queue.receive(10)] == [b"b1"]  # group a is locked
    await queue.release(head.receipt, delay=0.3)
    assert await queue.receive(10) == []  # a2 waits behind the backing-off a1
    got = await queue.receive(10, wait_seconds=5)
    assert [m.body for m in got] == [b"a1", b"a2", b"a3"]  # several of one group, in order
    await queue.ack([m.receipt for m in got])
    await queue.send(b"a4", group_id="a")
    [msg] = await queue.receive(10)
    assert msg.body == b"a4"


@pytest.mark.parametrize("fifo", [False, True])
async def test_dedup_id(backend: Backend, broker: QueueBroker, qname: str, fifo: bool) -> None:
    if not fifo:
        backend.require("standard_dedup")
    queue = broker.queue(QueueSpec(qname, fifo=fifo))
    await queue.send(b"one", group_id="g", dedup_id="d1")
    await queue.send(b"two", group_id="g", dedup_id="d1")
    await queue.send(b"three", group_id="g", dedup_id="d2")
    got = await drain(queue)
    assert [m.body for m in got] == [b"one", b"three"]


async def test_send_batch(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send_batch([OutgoingMessage(f"m{i}".encode()) for i in range(25)])
    await queue.send_batch([])
    assert (await queue.depth())["visible"] == 25
    assert sorted(m.body for m in await drain(queue)) == sorted(
        f"m{i}".encode() for i in range(25))


async def test_depth(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send_batch([OutgoingMessage(b"v1"), OutgoingMessage(b"v2"),
                            OutgoingMessage(b"f"), OutgoingMessage(b"d", delay=30)])
    assert await queue.depth() == {"visible": 3, "in_flight": 0, "delayed": 1, "dead": 0}
    await queue.receive(1)
    assert await queue.depth() == {"visible": 2, "in_flight": 1, "delayed": 1, "dead": 0}


async def test_concurrent_receivers_never_share(backend: Backend, qname: str) -> None:
    brokers = [backend.open(), backend.open()]
    try:
        queues = [b.queue(QueueSpec(qname, visibility_timeout=60)) for b in brokers]
        total = backend.concurrent_messages
        await queues[0].send_batch([OutgoingMessage(f"m{i}".encode()) for i in range(total)])

        async def worker(queue: Queue) -> list[str]:
            seen: list[str] = []
            while batch := await queue.receive(7):
                seen.extend(m.message_id for m in batch)
                await queue.ack([m.receipt for m in batch])
            return seen

        results = await asyncio.gather(*(worker(q) for q in queues for _ in range(2)))
        everything = [i for r in results for i in r]
        assert len(set(everything)) == total  # every message reached a receiver
        assert sum(1 for r in results if r) >= 2  # the receivers really did compete
        backend.require("exclusive_receives")
        assert len(everything) == total  # and none reached two
    finally:
        for b in brokers:
            await b.close()


async def test_sent_messages_survive_sigkill(backend: Backend, qname: str) -> None:
    backend.require("child_sender")
    if backend.child_sender is None:
        pytest.skip(f"{backend.name} cannot run a child sender")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(backend.child_sender(qname), stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    confirmed: set[bytes] = set()
    try:
        deadline = time.monotonic() + 30
        while len(confirmed) < 300:
            line = await asyncio.to_thread(child.stdout.readline)
            assert line, "child sender died"
            confirmed.add(line.strip())
            assert time.monotonic() < deadline
        os.kill(child.pid, signal.SIGKILL)
        confirmed.update(line.strip() for line in child.stdout.read().splitlines())
    finally:
        child.kill()
        child.wait()
    reopened = backend.open()
    try:
        present = {m.body for m in await drain(reopened.queue(QueueSpec(qname)))}
    finally:
        await reopened.close()
    assert confirmed <= present


async def test_extend_visibility_keeps_a_message_hidden(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send(b"slow")
    [msg] = await queue.receive(1, visibility_timeout=0.3)
    assert await queue.extend_visibility(msg.receipt, 30)
    # Well past the first visibility timeout: still hidden, still held by the same receipt.
    assert await queue.receive(1, wait_seconds=0.8) == []
    assert (await queue.depth())["in_flight"] == 1
    await queue.ack([msg.receipt])
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    assert not await queue.extend_visibility(msg.receipt, 30)  # acked: nothing to extend


async def test_extend_visibility_with_a_stale_receipt_changes_nothing(
        broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname))
    await queue.send(b"x")
    [first] = await queue.receive(1, visibility_timeout=0.2)
    [second] = await queue.receive(1, visibility_timeout=0.5, wait_seconds=5)
    assert not await queue.extend_visibility(first.receipt, 60)
    # The stale receipt did not keep it: it comes back when the second receive's time is up.
    [third] = await queue.receive(1, wait_seconds=5)
    assert third.message_id == second.message_id and third.receive_count == 3
    assert await queue.extend_visibility(third.receipt, 0)  # zero: visible again right away
    [again] = await queue.receive(1)
    assert again.message_id == third.message_id


async def test_fifo_extend_visibility_keeps_the_group_locked(broker: QueueBroker,
                                                             qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, fifo=True))
    await queue.send_batch([OutgoingMessage(b"a1", group_id="a"),
                            OutgoingMessage(b"a2", group_id="a")])
    [head] = await queue.receive(1, visibility_timeout=0.3)
    assert await queue.extend_visibility(head.receipt, 30)
    assert await queue.receive(10, wait_seconds=0.8) == []  # a2 never overtakes a1
    await queue.ack([head.receipt])
    [msg] = await queue.receive(10)
    assert msg.body == b"a2"


async def test_fifo_receives_take_turns_between_lanes(backend: Backend, broker: QueueBroker,
                                                      qname: str) -> None:
    backend.require("lanes")
    queue = broker.queue(QueueSpec(qname, fifo=True))
    # A campaign of one lane (one number, many recipients) queued before another lane's one.
    await queue.send_batch([OutgoingMessage(f"c{i}".encode(), group_id=f"t1/n1/r{i}")
                            for i in range(300)])
    await queue.send(b"otp", group_id="t2/n2/r0")
    got = await queue.receive(4)
    assert b"otp" in [m.body for m in got]
    # Small receives serve every lane in turn too.
    await queue.send(b"otp2", group_id="t2/n2/r1")
    bodies = [m.body for _ in range(2) for m in await queue.receive(1)]
    assert b"otp2" in bodies


async def test_fifo_backlog_behind_a_head_and_redrive_order(backend: Backend, broker: QueueBroker,
                                                            qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, fifo=True, max_receives=1, visibility_timeout=0.1))
    await queue.send_batch([OutgoingMessage(f"a{i}".encode(), group_id="g/a")
                            for i in range(5)])
    [head] = await queue.receive(1)
    assert head.body == b"a0"
    # Its visibility runs out with one receive allowed: it is dead-lettered, a1 takes its place.
    got: list[ReceivedMessage] = []

    async def rest_of_group() -> bool:
        got.extend(await queue.receive(10, visibility_timeout=30))
        return bool(got)

    await eventually(rest_of_group)
    assert (await queue.depth())["dead"] == 1
    assert [m.body for m in got] == [f"a{i}".encode() for i in range(1, 5)]
    await queue.release(got[0].receipt)
    for later in got[1:]:
        await queue.release(later.receipt)
    # Redriven, the older a0 is the group's head again: nothing of its group overtakes it.
    assert await queue.redrive() == 1
    backend.require("redrive_to_head")  # what precedes holds on every backend
    got = await queue.receive(10, visibility_timeout=30)
    assert [m.body for m in got][:1] == [b"a0"]
    assert [m.body for m in got if m.group_id == "g/a"] == sorted(m.body for m in got)


async def test_fifo_redrive_of_a_letter_sent_to_the_dlq_directly(broker: QueueBroker,
                                                                 qname: str) -> None:
    # What the send stage does when attempts run out: the body goes to the DLQ by a plain send,
    # without its group; `dlq replay` redrives it into the FIFO queue.
    queue = broker.queue(QueueSpec(qname, fifo=True))
    await queue.send(b"first", group_id="t/n/a")
    assert [m.body for m in await drain(queue)] == [b"first"]
    await broker.queue(QueueSpec(f"{qname}.dlq")).send(b"gave up")
    assert await queue.redrive() == 1
    [msg] = await queue.receive(10)
    assert msg.body == b"gave up"


async def test_release_keeps_the_reason_into_the_dlq(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=1))
    await queue.send(b"poison")
    [msg] = await queue.receive(1)
    await queue.release(msg.receipt, reason="ValueError: bad field")
    assert await queue.receive(1) == []  # swept to the DLQ at this receive
    [letter] = await queue.dead_letters()
    assert letter.attributes["reason"] == "ValueError: bad field"
    assert letter.attributes["source_queue"] == qname
    assert letter.attributes["size"] == str(len(b"poison"))


async def test_release_without_counting_keeps_it_out_of_the_dlq(broker: QueueBroker,
                                                                 qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=2))
    await queue.send(b"x")
    for _ in range(5):  # far more failures than max_receives, none of them the message's
        [msg] = await queue.receive(1)
        assert msg.receive_count == 1
        await queue.release(msg.receipt, reason="database is locked", count=False)
    assert (await queue.depth())["dead"] == 0


async def test_dead_letter_now_with_reason(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=50))
    await queue.send(b"x")
    [msg] = await queue.receive(1)
    await queue.dead_letter(msg.receipt, "gave up after 86400 s: database is locked")
    assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 1}
    [letter] = await queue.dead_letters()
    assert letter.attributes["reason"] == "gave up after 86400 s: database is locked"
    assert await queue.redrive() == 1
    [again] = await queue.receive(1)
    assert again.body == b"x" and again.sent_at >= msg.sent_at  # a whole new budget


async def test_discard_dead_letters(broker: QueueBroker, qname: str) -> None:
    queue = broker.queue(QueueSpec(qname, max_receives=1))
    await queue.send_batch([OutgoingMessage(b"a"), OutgoingMessage(b"b"), OutgoingMessage(b"c")])
    for msg in await queue.receive(10):
        await queue.dead_letter(msg.receipt, "test")
    await queue.send(b"live")
    letters = await queue.dead_letters()
    chosen = next(m for m in letters if m.body == b"a")
    assert await queue.discard([chosen.message_id]) == 1
    assert sorted(m.body for m in await queue.dead_letters()) == [b"b", b"c"]
    assert await queue.discard() == 2
    assert await queue.dead_letters() == []
    assert (await queue.depth())["visible"] == 1  # live messages are not touched
