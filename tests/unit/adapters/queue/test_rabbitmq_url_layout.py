"""The RabbitMQ adapter's pure parts: its URL (the password never shows), the broker queues a
port queue is made of, delay tiers, partition hashing, and the FIFO buffer's choices."""

from __future__ import annotations

import zlib

import pytest

from wacloud.adapters.queue.base import QueueSpec
from wacloud.adapters.queue.rabbitmq.buffer import GroupBuffer
from wacloud.adapters.queue.rabbitmq.envelope import Envelope
from wacloud.adapters.queue.rabbitmq.layout import (
    DELAY_TIERS_MS,
    Layout,
    delay_tier_ms,
    partition_of,
)
from wacloud.adapters.queue.rabbitmq.url import parse_address

SECRET = "pa:ss/w@rd"


def test_url_parts_and_defaults() -> None:
    address = parse_address("amqp://app:pw@mq.example:5673/prod?prefix=wa&partitions=8")
    assert (address.host, address.port, address.user, address.vhost) == (
        "mq.example", 5673, "app", "prod")
    assert (address.prefix, address.partitions) == ("wa", 8)
    plain = parse_address("amqp://mq.example")
    assert (plain.port, plain.user, plain.vhost, plain.prefix, plain.partitions) == (
        5672, "guest", "/", "", 4)
    assert parse_address("amqps://u:p@h/%2F").port == 5671
    assert parse_address("amqps://u:p@h/%2F").vhost == "/"


def test_password_is_decoded_and_never_shown() -> None:
    address = parse_address("amqp://app:pa%3Ass%2Fw%40rd@mq.example/v%2F1")
    assert address.password == SECRET and address.vhost == "v/1"
    assert SECRET not in repr(address) and "pa%3A" not in repr(address)
    assert address.safe == "amqp://app@mq.example:5672/v%2F1"
    assert SECRET not in address.safe
    # What aio-pika gets is encoded back, so the password survives its own URL parsing.
    assert "pa%3Ass%2Fw%40rd@" in address.connect_url


@pytest.mark.parametrize("url, message", [
    ("sqlite:///x", "not an amqp URL"),
    ("amqp://u:secret@h:port/v", "the port is not a number"),
    ("amqp://u:secret@h/v?prefx=a", "unknown parameter(s) prefx"),
    ("amqp://u:secret@h/v?partitions=0", "partitions must be 1 to 256"),
    ("amqp://u:secret@/v", "no host"),
])
def test_bad_urls_say_what_is_wrong_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_address(url)
    assert message in str(caught.value)
    assert "secret" not in str(caught.value)


def test_delays_round_up_to_a_tier() -> None:
    assert delay_tier_ms(0.3) == 500
    assert delay_tier_ms(0.25) == 250
    assert delay_tier_ms(0) == DELAY_TIERS_MS[0]
    assert delay_tier_ms(90) == 120_000
    assert delay_tier_ms(10 * 86_400) == DELAY_TIERS_MS[-1]  # capped at the longest


def test_partition_hashing_is_stable_and_spreads() -> None:
    group = "acme/5511999990000/5511988887777"
    assert partition_of(group, 4) == zlib.crc32(group.encode()) % 4
    assert partition_of(None, 4) == partition_of("", 4)
    used = {partition_of(f"t/n/r{i}", 8) for i in range(200)}
    assert used == set(range(8))


def test_layout_of_standard_and_fifo_queues() -> None:
    standard = Layout(QueueSpec("inbound.raw", max_receives=7), "wa", 4)
    declared = {d.name: d for d in standard.declarations()}
    main = declared["wa.inbound.raw"]
    assert main.quorum and main.arguments["x-delivery-limit"] == 7
    assert main.arguments["x-dead-letter-routing-key"] == "wa.inbound.raw.dlq"
    wait = declared["wa.inbound.raw.wait.500"]
    assert wait.arguments["x-message-ttl"] == 500
    assert wait.arguments["x-dead-letter-routing-key"] == "wa.inbound.raw"
    assert len([n for n in declared if ".wait." in n]) == len(DELAY_TIERS_MS)

    fifo = Layout(QueueSpec("outbound.send", fifo=True), "", 3)
    names = [d.name for d in fifo.declarations()]
    assert names == ["outbound.send.p0", "outbound.send.p1", "outbound.send.p2",
                     "outbound.send.dlq"]
    assert all(d.arguments["x-single-active-consumer"] for d in fifo.declarations()[:3])
    assert fifo.partition_for("t/n/r") == f"outbound.send.p{partition_of('t/n/r', 3)}"


def _held(buffer: GroupBuffer, body: str, group: str, order: int, *,
          redriven: bool = False) -> None:
    envelope = Envelope(body.encode(), body, "q", group, sent_at=1.0, order=order)
    buffer.add(envelope, None, 0, 0, 2.0, redriven=redriven)


def test_buffer_takes_a_group_in_order_and_locks_it_behind_its_head() -> None:
    buffer = GroupBuffer()
    for i in range(3):
        _held(buffer, f"a{i}", "l/a", i)
    live, dead = buffer.pick(1, 10.0, 5)
    assert [e.envelope.body for e in live] == [b"a0"] and dead == []
    buffer.hand_out(live[0], "r1", until=40.0)
    assert buffer.pick(10, 10.0, 5) == ([], [])  # a0 is out: nothing of its group
    live, _ = buffer.pick(10, 41.0, 5)  # its visibility ran out: the group again, in order
    assert [e.envelope.body for e in live] == [b"a0", b"a1", b"a2"]


def test_buffer_puts_a_redriven_message_back_before_later_ones() -> None:
    buffer = GroupBuffer()
    _held(buffer, "a1", "l/a", 1)
    _held(buffer, "a2", "l/a", 2)
    _held(buffer, "a0", "l/a", 0, redriven=True)
    live, _ = buffer.pick(10, 10.0, 5)
    assert [e.envelope.body for e in live] == [b"a0", b"a1", b"a2"]


def test_buffer_serves_lanes_in_turn_and_dead_letters_spent_heads() -> None:
    buffer = GroupBuffer()
    for i in range(50):
        _held(buffer, f"c{i}", f"t1/n1/r{i}", i)
    _held(buffer, "otp", "t2/n2/r0", 100)
    live, _ = buffer.pick(2, 10.0, 5)
    assert b"otp" in [e.envelope.body for e in live]
    spent = GroupBuffer()
    _held(spent, "x0", "l/x", 0)
    _held(spent, "x1", "l/x", 1)
    next(iter(spent)).received = 5
    live, dead = spent.pick(10, 10.0, 5)
    assert [e.envelope.body for e in dead] == [b"x0"]
    assert [e.envelope.body for e in live] == [b"x1"]
