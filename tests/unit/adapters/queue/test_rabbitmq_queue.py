"""The RabbitMQ adapter on the machine's RabbitMQ (a fresh virtual host per test), for what the
port's contract suite does not cover: provisioning and `QueueMissing`, the broker's own
delivery limit, one active consumer per FIFO partition, a lost connection, and no password in
errors."""

from __future__ import annotations

import socket
import subprocess
import time
import traceback
from collections.abc import AsyncIterator

import aio_pika
import pytest

from tests.contract.test_queue_contract import eventually
from wacloud.adapters.queue.base import (
    OutgoingMessage,
    QueueMissing,
    QueueSpec,
    ReceivedMessage,
)
from wacloud.adapters.queue.rabbitmq import RabbitBroker
from wacloud.adapters.queue.rabbitmq.url import parse_address


@pytest.fixture
async def broker(rabbitmq_url: str) -> AsyncIterator[RabbitBroker]:
    opened = RabbitBroker(parse_address(f"{rabbitmq_url}?prefix=t"))
    yield opened
    await opened.close()


async def test_a_missing_queue_is_named_until_created(broker: RabbitBroker) -> None:
    spec = QueueSpec("inbound.raw")
    queue = broker.queue(spec)  # no I/O yet
    with pytest.raises(QueueMissing) as caught:
        await queue.send(b"x")
    assert caught.value.name == "inbound.raw"
    assert "wacloud queues create" in str(caught.value)
    specs = [QueueSpec("outbound.send.dlq"),  # the send stage's; the DLQ of outbound.send
             spec, QueueSpec("outbound.send", fifo=True)]
    created = await broker.create_queues(specs)
    assert "t.inbound.raw" in created and "t.inbound.raw.dlq" in created
    assert "t.outbound.send.p0" in created and "t.outbound.send.dlq.dlq" in created
    assert len(created) == len(set(created))
    assert await broker.create_queues(specs) == created  # idempotent
    # Declared as a dead-letter queue (not a quorum work queue), though listed first: a
    # redeclare with the other arguments would be refused.
    async with broker.scratch() as raw:
        await raw.queue_declare("t.outbound.send.dlq", durable=True,
                                arguments={"x-queue-type": "classic"})
    await queue.send(b"x")
    [msg] = await queue.receive(1)
    assert msg.body == b"x"


async def test_the_broker_dead_letters_at_the_delivery_limit(rabbitmq_url: str,
                                                             broker: RabbitBroker) -> None:
    # Consumers that die holding the message (their channel closes unacked) are counted by
    # the broker: past the limit it moves the message to the DLQ itself.
    spec = QueueSpec("jobs", max_receives=2)
    await broker.create_queues([spec])
    queue = broker.queue(spec)
    await queue.send(b"crashes its consumer")
    for _ in range(spec.max_receives + 1):
        connection = await aio_pika.connect(rabbitmq_url)
        channel = await connection.channel()
        jobs = await channel.get_queue("t.jobs", ensure=False)
        assert await jobs.get(no_ack=False, fail=False) is not None
        await connection.close()  # dies with it unacked

    async def dead_lettered() -> bool:  # the broker moves it once it sees the channel close
        return (await queue.depth())["dead"] == 1

    await eventually(dead_lettered)
    [letter] = await queue.dead_letters()
    assert letter.body == b"crashes its consumer"
    assert letter.receive_count == spec.max_receives + 1
    assert letter.attributes["source_queue"] == "jobs"
    assert await queue.redrive() == 1
    [again] = await queue.receive(1, wait_seconds=5)
    assert again.receive_count == 1


async def test_one_active_consumer_per_partition(rabbitmq_url: str) -> None:
    address = parse_address(f"{rabbitmq_url}?partitions=1")
    first, second = RabbitBroker(address, auto_create=True), RabbitBroker(address)
    try:
        spec = QueueSpec("sends", fifo=True)
        await first.queue(spec).send_batch([])
        await first.queue(spec).send(b"a1", group_id="t/n/a")
        await first.queue(spec).send(b"a2", group_id="t/n/a")
        [head] = await first.queue(spec).receive(1)
        assert head.body == b"a1"
        # The other process consumes the partition too, but is not its active consumer.
        assert await second.queue(spec).receive(10, wait_seconds=0.3) == []
        await first.close()  # a crash: what it held goes to the next consumer, in order
        got = await second.queue(spec).receive(10, wait_seconds=5)
        # a2 was held (prefetched) by the first too: the broker counts its delivery as well.
        assert [(m.body, m.receive_count) for m in got] == [(b"a1", 2), (b"a2", 2)]
    finally:
        await first.close()
        await second.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("where", ["nobody listens", "wrong password"])
async def test_errors_never_hold_the_password(rabbitmq_url: str, where: str) -> None:
    secret = "s3cr3t-Passw0rd"
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    port = _free_port() if where == "nobody listens" else 5672
    broker = RabbitBroker(parse_address(f"amqp://guest:{secret}@127.0.0.1:{port}/{vhost}"),
                          auto_create=True)
    assert secret not in repr(broker) and secret not in repr(broker.address)
    try:
        with pytest.raises(ConnectionError) as caught:
            await broker.queue(QueueSpec("q")).send(b"x")
        shown = "".join(traceback.format_exception(caught.value))
        assert "cannot connect to RabbitMQ at amqp://guest@127.0.0.1" in shown
        assert secret not in shown
    finally:
        await broker.close()


async def test_receives_resume_after_the_connection_is_lost(rabbitmq_url: str) -> None:
    vhost = rabbitmq_url.rsplit("/", 1)[1]
    broker = RabbitBroker(parse_address(rabbitmq_url), auto_create=True)
    try:
        fifo, plain = broker.queue(QueueSpec("f", fifo=True)), broker.queue(QueueSpec("s"))
        await fifo.send_batch([OutgoingMessage(f"a{i}".encode(), group_id="t/n/a")
                               for i in range(3)])
        await plain.send(b"s1")
        [head] = await fifo.receive(1)
        [held] = await plain.receive(1)
        # The broker drops the connection (a restart, a network cut): what was held goes
        # back to the queues, counted as delivered; the old receipts are stale.
        subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test"],
                       check=True, capture_output=True)

        async def everything_back() -> bool:
            try:
                back.extend(await fifo.receive(10, wait_seconds=0.5))
                back.extend(await plain.receive(10, wait_seconds=0.5))
            except ConnectionError:  # still reconnecting (waited for, up to a limit)
                pass
            return len(back) == 4

        back: list[ReceivedMessage] = []
        deadline = time.monotonic() + 30
        while not await everything_back():
            assert time.monotonic() < deadline, f"only {back} came back"
        assert [(m.body, m.receive_count) for m in back] == [
            (b"a0", 2), (b"a1", 2), (b"a2", 2), (b"s1", 2)]
        await fifo.ack([head.receipt])
        await plain.ack([held.receipt])  # stale: nothing happens
        assert (await fifo.depth())["in_flight"] == 3
        await fifo.ack([m.receipt for m in back[:3]])
        await plain.ack([back[3].receipt])
        for queue in (fifo, plain):
            assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0,
                                           "dead": 0}
    finally:
        await broker.close()


async def test_a_stop_hands_back_what_a_standard_queue_holds_uncounted(rabbitmq_url: str
                                                                       ) -> None:
    address = parse_address(rabbitmq_url)
    first = RabbitBroker(address, auto_create=True)
    queue = first.queue(QueueSpec("jobs"))
    await queue.send_batch([OutgoingMessage(b"taken"), OutgoingMessage(b"given back"),
                            OutgoingMessage(b"only prefetched")])
    got = await queue.receive(2, wait_seconds=5)
    assert len(got) == 2
    given_back = next(m for m in got if m.body == b"given back")
    await queue.release(given_back.receipt, count=False)  # as a worker's graceful stop does
    await first.close()  # a graceful stop: the channel would have counted one each
    second = RabbitBroker(address)
    try:
        again = await second.queue(QueueSpec("jobs")).receive(10, wait_seconds=5)
        counts = {m.body: m.receive_count for m in again}
        taken = next(m.body for m in got if m.body != b"given back")
        assert counts == {taken: 2, b"given back": 1,
                          ({b"taken", b"only prefetched"} - {taken}).pop(): 1}
    finally:
        await second.close()
