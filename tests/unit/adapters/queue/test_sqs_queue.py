"""The SQS queue's own parts against moto's server: names, provisioning and QueueMissing, large
bodies in the media store, retries of the entries a batch failed, and what `release` does where
SQS decides (the port's contract suite covers the rest)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from wacloud.adapters.media.local.store import LocalMediaStore
from wacloud.adapters.queue import open_queue_broker
from wacloud.adapters.queue.base import OutgoingMessage, QueueMissing, QueueSpec
from wacloud.adapters.queue.sqs import SqsBroker
from wacloud.adapters.queue.sqs.bodies import BodyTooLarge, entry_size
from wacloud.adapters.queue.sqs.calls import SqsBatchError, batches
from wacloud.adapters.queue.sqs.entries import new_entry
from wacloud.adapters.queue.sqs.names import parse_prefix, sqs_name
from wacloud.adapters.queue.sqs.receipts import DONE_KEPT, Held, Receipts
from wacloud.bootstrap import queue_specs
from wacloud.settings import load_settings
from wacloud.stages import envelopes


@pytest.fixture
async def broker(aws_env: dict[str, str], tmp_path: Path) -> AsyncIterator[SqsBroker]:
    opened = SqsBroker(f"wut{uuid.uuid4().hex[:8]}", LocalMediaStore(tmp_path / "media"),
                       tmp_dir=tmp_path / "tmp")
    yield opened
    await opened.close()


def sqs_client() -> Any:
    return boto3.session.Session().client("sqs")


def queue_attributes(broker: SqsBroker, name: str) -> dict[str, str]:
    client = sqs_client()
    url = client.get_queue_url(QueueName=name)["QueueUrl"]
    attrs: dict[str, str] = client.get_queue_attributes(QueueUrl=url,
                                                        AttributeNames=["All"])["Attributes"]
    return attrs


def stored(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "media" / "queue-bodies").rglob("*") if p.is_file()]


# -- names -----------------------------------------------------------------------------------

def test_names_are_made_legal_for_sqs() -> None:
    assert sqs_name("acme", "inbound.raw", fifo=False) == "acme-inbound-raw"
    assert sqs_name("acme-", "outbound.send", fifo=True) == "acme-outbound-send.fifo"
    assert sqs_name("acme", "outbound.send.dlq", fifo=True) == "acme-outbound-send-dlq.fifo"
    assert sqs_name("", "inbound.raw", fifo=False) == "inbound-raw"
    with pytest.raises(ValueError, match="longer than 80"):
        sqs_name("p" * 70, "inbound.media", fifo=True)
    with pytest.raises(ValueError, match="characters SQS does not allow"):
        sqs_name("acme", "in bound", fifo=False)


def test_the_url_gives_the_prefix_and_nothing_else() -> None:
    assert parse_prefix("sqs://?prefix=acme_prod") == "acme_prod"
    assert parse_prefix("sqs://") == ""
    for bad in ("sqs://?prefix=a.b", "sqs://host/x?prefix=a", "sqs://?prefix=a&region=x"):
        with pytest.raises(ValueError, match="WACLOUD_QUEUE_URL"):
            parse_prefix(bad)


def test_open_queue_broker_picks_sqs(aws_env: dict[str, str], tmp_path: Path) -> None:
    broker = open_queue_broker("sqs://?prefix=acme", load_settings(tmp_path))
    assert isinstance(broker, SqsBroker) and broker.prefix == "acme"


# -- provisioning ----------------------------------------------------------------------------

async def test_a_missing_queue_is_named_at_first_use(broker: SqsBroker) -> None:
    queue = broker.queue(QueueSpec("inbound.raw"))  # nothing asked of SQS yet
    with pytest.raises(QueueMissing, match="wacloud queues create") as raised:
        await queue.send(b"x")
    assert raised.value.name == f"{broker.prefix}-inbound-raw"
    assert f"{broker.prefix}-inbound-raw" in str(raised.value)


async def test_create_queues_is_idempotent_and_wires_each_dlq(broker: SqsBroker,
                                                              tmp_path: Path) -> None:
    by_name = queue_specs(load_settings(tmp_path))
    specs = list(by_name.values())
    created = await broker.create_queues(specs)
    p = broker.prefix
    assert created[:2] == [f"{p}-inbound-raw-dlq", f"{p}-inbound-raw"]  # its DLQ first
    assert f"{p}-outbound-send-dlq.fifo" in created and f"{p}-outbound-send.fifo" in created
    # `outbound.send.dlq`, declared on its own, is the send queue's DLQ: no queue of its own.
    assert not any(name.startswith(f"{p}-outbound-send-dlq-") for name in created)
    assert f"{p}-outbound-send-dlq" not in created
    assert await broker.create_queues(specs) == created  # again: nothing new, no error

    send = queue_attributes(broker, f"{p}-outbound-send.fifo")
    policy = json.loads(send["RedrivePolicy"])
    assert policy["deadLetterTargetArn"].endswith(f":{p}-outbound-send-dlq.fifo")
    assert policy["maxReceiveCount"] == by_name[envelopes.OUTBOUND_SEND].max_receives == 300
    assert send["FifoQueue"] == "true"
    assert send["VisibilityTimeout"] == str(int(load_settings(tmp_path).send_timeout_s * 3))

    # A changed spec is brought to the queue.
    await broker.create_queues([QueueSpec(envelopes.INBOUND_RAW, max_receives=9,
                                          visibility_timeout=12.5)])
    raw = queue_attributes(broker, f"{p}-inbound-raw")
    assert json.loads(raw["RedrivePolicy"])["maxReceiveCount"] == 9
    assert raw["VisibilityTimeout"] == "13"  # whole seconds on SQS, rounded up

    # The send stage's letters reach the FIFO DLQ through the standard spec that names it.
    dead = broker.queue(QueueSpec(envelopes.OUTBOUND_SEND_DEAD))
    await dead.send(b"gave up")
    send_queue = broker.queue(queue_specs(load_settings(tmp_path))[envelopes.OUTBOUND_SEND])
    [letter] = await send_queue.dead_letters()
    assert (letter.body, letter.receive_count, letter.group_id) == (b"gave up", 0, None)


async def test_a_dead_letter_queue_named_alone_is_found_without_its_source(
        broker: SqsBroker) -> None:
    await broker.create_queues([QueueSpec("jobs", fifo=True)])
    fresh = SqsBroker(broker.prefix, tmp_dir=broker.tmp_dir)  # has never seen the spec of jobs
    try:
        await fresh.queue(QueueSpec("jobs.dlq")).send(b"letter")
        [letter] = await fresh.queue(QueueSpec("jobs", fifo=True)).dead_letters()
        assert letter.body == b"letter"
    finally:
        await fresh.close()


# -- bodies ----------------------------------------------------------------------------------

async def test_large_bodies_wait_in_the_media_store(broker: SqsBroker, tmp_path: Path) -> None:
    await broker.create_queues([QueueSpec("big", max_receives=1)])
    queue = broker.queue(QueueSpec("big", max_receives=1))
    large = b"x" * (300 * 1024)
    binary = bytes(range(256)) * 4  # not UTF-8: goes as base64
    await queue.send_batch([OutgoingMessage(large), OutgoingMessage(binary),
                            OutgoingMessage(b"small")])
    assert len(stored(tmp_path)) == 1
    got = {m.body: m for m in await queue.receive(10, wait_seconds=1)}
    assert set(got) == {large, binary, b"small"}
    # Through the dead-letter queue and back, the body stays where it is.
    await queue.dead_letter(got[large].receipt, "too big to handle")
    [letter] = await queue.dead_letters()
    assert letter.body == large and letter.attributes["size"] == str(len(large))
    assert await queue.redrive() == 1
    [again] = await queue.receive(1, wait_seconds=1)
    assert again.body == large and len(stored(tmp_path)) == 1
    await queue.ack([m.receipt for m in (again, got[binary], got[b"small"])])
    assert stored(tmp_path) == []  # the ack deleted it

    await queue.send(large)
    [msg] = await queue.receive(1)
    await queue.dead_letter(msg.receipt, "x")
    assert await queue.discard() == 1
    assert stored(tmp_path) == []  # so did the discard


async def test_a_large_body_without_a_media_store_is_refused(broker: SqsBroker) -> None:
    await broker.create_queues([QueueSpec("big")])
    bare = SqsBroker(broker.prefix, None, tmp_dir=broker.tmp_dir)
    try:
        queue = bare.queue(QueueSpec("big"))
        with pytest.raises(BodyTooLarge, match="no media store"):
            await queue.send(b"x" * (300 * 1024))
        assert await queue.depth() == {"visible": 0, "in_flight": 0, "delayed": 0, "dead": 0}
    finally:
        await bare.close()


def test_batches_hold_ten_entries_and_256_kib_at_most() -> None:
    entries = [new_entry("x" * 60_000, {}, fifo=False, group_id="g") for _ in range(9)]
    entries += [new_entry("y", {}, fifo=False, group_id=None) for _ in range(25)]
    cut = list(batches(entries))
    assert [len(b) for b in cut] == [4, 4, 10, 10, 6]
    assert all(sum(entry_size(e) for e in b) <= 256 * 1024 for b in cut)


def test_entries_follow_sqs_limits() -> None:
    assert new_entry("x", {}, fifo=False, group_id=None, delay=5000)["DelaySeconds"] == 900
    long_group = "t/" + "c" * 200
    entry = new_entry("x", {}, fifo=True, group_id=long_group, dedup_id="acme:1")
    assert len(entry["MessageGroupId"]) == 64  # a digest: SQS takes 128 characters at most
    assert entry["MessageAttributes"]["wacloud.group"]["StringValue"] == long_group
    assert entry["MessageDeduplicationId"] == "acme:1"


async def test_fifo_sends_take_no_delay(broker: SqsBroker) -> None:
    await broker.create_queues([QueueSpec("f", fifo=True)])
    with pytest.raises(ValueError, match="no per-message delay"):
        await broker.queue(QueueSpec("f", fifo=True)).send(b"x", group_id="g", delay=5)


# -- batch retries ---------------------------------------------------------------------------

def fail_first_entry(broker: SqsBroker, *, sender_fault: bool, times: int = 1) -> list[int]:
    """Make SQS's answers to the next `times` SendMessageBatch calls report their first entry
    as failed (the entry was stored anyway: a FIFO queue's de-duplication drops its resend).
    Returns the sizes of the batches sent, as they are sent."""
    sent: list[int] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        sent.append(len(params["Entries"]))

    def after(parsed: dict[str, Any], **_: Any) -> None:
        if len(sent) <= times and parsed.get("Successful"):
            first = parsed["Successful"].pop(0)
            parsed.setdefault("Failed", []).append({
                "Id": first["Id"], "SenderFault": sender_fault, "Code": "InternalError",
                "Message": "injected"})

    events = broker.client.meta.events
    events.register("provide-client-params.sqs.SendMessageBatch", before)
    events.register("after-call.sqs.SendMessageBatch", lambda parsed, **kw: after(parsed))
    return sent


async def test_entries_a_batch_failed_are_sent_again(broker: SqsBroker) -> None:
    await broker.create_queues([QueueSpec("retry", fifo=True)])
    queue = broker.queue(QueueSpec("retry", fifo=True))
    sent = fail_first_entry(broker, sender_fault=False, times=2)
    await queue.send_batch([OutgoingMessage(f"m{i}".encode(), group_id=f"g{i}",
                                            dedup_id=f"d{i}") for i in range(3)])
    assert sent == [3, 1, 1]  # the batch, then its failed entry twice
    got = await queue.receive(10)
    assert sorted(m.body for m in got) == [b"m0", b"m1", b"m2"]


async def test_entries_sqs_refuses_are_an_error(broker: SqsBroker) -> None:
    await broker.create_queues([QueueSpec("refused")])
    fail_first_entry(broker, sender_fault=True)
    with pytest.raises(SqsBatchError, match="InternalError"):
        await broker.queue(QueueSpec("refused")).send_batch([OutgoingMessage(b"a")])


# -- release where SQS counts receives -------------------------------------------------------

async def test_a_receive_given_back_keeps_the_first_send_time_and_the_reason(
        broker: SqsBroker) -> None:
    spec = QueueSpec("copies", max_receives=2, visibility_timeout=1)
    await broker.create_queues([spec])
    queue = broker.queue(spec)
    await queue.send(b"x")
    [first] = await queue.receive(1)
    await queue.release(first.receipt, count=False, reason="database is locked")
    [copy] = await queue.receive(1)
    assert (copy.receive_count, copy.sent_at) == (1, first.sent_at)
    assert copy.message_id != first.message_id  # a copy: SQS cannot un-count a receive
    await queue.release(copy.receipt)  # counted
    [second] = await queue.receive(1)
    assert second.receive_count == 2
    await queue.release(second.receipt, count=False)  # the copy carries its 2 receives
    [third] = await queue.receive(1)
    assert third.receive_count == 2
    # Its visibility runs out (a crashed worker): past its budget, it goes to the DLQ with the
    # reason the copies kept, although SQS counted only one receive of this copy.
    assert await queue.receive(1, wait_seconds=3) == []
    [letter] = await queue.dead_letters()
    assert letter.attributes["reason"] == "database is locked"
    assert letter.receive_count == 2 and letter.sent_at == first.sent_at


async def test_fifo_releases_count_every_receive(broker: SqsBroker) -> None:
    spec = QueueSpec("fifo-count", fifo=True, max_receives=2)
    await broker.create_queues([spec])
    queue = broker.queue(spec)
    await queue.send(b"a1", group_id="g")
    await queue.send(b"a2", group_id="g")
    [msg] = await queue.receive(1)
    await queue.release(msg.receipt, count=False)  # not given back: a copy would lose order
    [again] = await queue.receive(1)
    assert (again.body, again.message_id, again.receive_count) == (b"a1", msg.message_id, 2)


async def test_a_stale_receipt_from_this_process_changes_nothing(broker: SqsBroker) -> None:
    spec = QueueSpec("stale")
    await broker.create_queues([spec])
    queue = broker.queue(spec)
    await queue.send(b"x")
    [first] = await queue.receive(1, visibility_timeout=0.1)
    [second] = await queue.receive(1, wait_seconds=3)
    await queue.dead_letter(first.receipt, "stale")  # ignored: moto would take the old handle
    assert not await queue.extend_visibility(first.receipt, 60)
    assert (await queue.depth())["dead"] == 0
    await queue.ack([second.receipt])
    assert not await queue.extend_visibility(second.receipt, 60)


async def test_delete_by_id_reaches_visible_messages_and_dead_letters(broker: SqsBroker,
                                                                       tmp_path: Path) -> None:
    spec = QueueSpec("erase")
    await broker.create_queues([spec])
    queue = broker.queue(spec)
    await queue.send_batch([OutgoingMessage(b"a"), OutgoingMessage(b"b" * (300 * 1024)),
                            OutgoingMessage(b"keep")])
    got = {m.body[:1]: m for m in await queue.receive(10, wait_seconds=1)}
    await queue.dead_letter(got[b"a"].receipt, "x")
    [letter] = await queue.dead_letters()
    await queue.release(got[b"b"].receipt)
    await queue.release(got[b"k"].receipt)
    assert await queue.delete([letter.message_id, got[b"b"].message_id, "no-such-id"]) == 2
    assert stored(tmp_path) == []  # the large body's object went too
    assert await queue.dead_letters() == []
    [kept] = await queue.receive(10, wait_seconds=1)
    assert kept.body == b"keep"


def test_receipts_hold_only_what_is_in_flight() -> None:
    receipts = Receipts()
    receipts.add("r1", Held("url", {"MessageId": "m"}, 1, 0.0, None, time.monotonic() + 30))
    receipts.add("r2", Held("url", {"MessageId": "m"}, 2, 0.0, None, time.monotonic() + 30))
    assert receipts.is_stale("r1") and receipts.lookup("r1") is None  # received again
    assert receipts.lookup("r2") is not None
    receipts.done("r2")
    assert len(receipts) == 0 and receipts.is_stale("r2")  # acked: body and message dropped
    for i in range(DONE_KEPT):
        receipts.done(f"other{i}")
    assert not receipts.is_stale("r2")  # only the most recent are remembered
