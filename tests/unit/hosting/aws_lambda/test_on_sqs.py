"""The Lambda handlers on Amazon SQS (moto's server over HTTP, the SQS queue adapter): the
events are built from what SQS's ReceiveMessage answers, as Lambda's event source mapping
builds them, and what the functions do not report failed is deleted with DeleteMessageBatch,
as the mapping does (`harness.EventSourceMapping`)."""

from __future__ import annotations

import time

from tests.e2e.conftest import wait_for
from tests.unit.hosting.aws_lambda.conftest import APP_SECRET
from tests.unit.hosting.aws_lambda.harness import (
    EventSourceMapping,
    LambdaWorld,
    fixture,
    meta_event,
)
from tests.unit.hosting.aws_lambda.test_pipeline import insert_rows, text_webhook
from wacloud.domain.model import OutboundStatus
from wacloud.hosting.aws_lambda import collector, receiver, saver, sender, writer
from wacloud.stages.envelopes import INBOUND_RAW, OUTBOUND_RESULTS, OUTBOUND_SEND


def test_inbound_on_sqs_with_a_poisoned_record(world: LambdaWorld,
                                               sqs: EventSourceMapping) -> None:
    for i in range(2):
        answer = world.invoke("receiver", receiver.handler, meta_event(
            text_webhook(f"sqs {i}", f"wamid.sqs-{i}"), APP_SECRET))
        assert answer["statusCode"] == 200, answer
    sqs.client.send_message(QueueUrl=sqs.urls[INBOUND_RAW], MessageBody="{not an envelope")

    messages, failed = sqs.deliver(INBOUND_RAW, writer.handler)
    assert len(messages) == 3
    [poisoned] = [m["MessageId"] for m in messages if m["Body"] == "{not an envelope"]
    assert failed == [poisoned]
    stored = sorted(r["provider_message_id"] for r in world.inbound_rows("acme"))
    assert stored == ["wamid.sqs-0", "wamid.sqs-1"]
    # Deleted but the poisoned one, which backs off (ChangeMessageVisibility) instead of
    # coming back at once.
    assert sqs.counts(INBOUND_RAW) == {"visible": 0, "not_visible": 1}
    assert sqs.deliver(INBOUND_RAW, writer.handler) == ([], [])


def test_outbound_on_sqs_keeps_fifo_order_after_a_failed_send(
        world: LambdaWorld, sqs: EventSourceMapping) -> None:
    a, b = "5511944440001", "5511944440002"
    ids = insert_rows(world, [a, a, a, b])
    assert world.invoke("collector", collector.handler, fixture("schedule_event"))["queued"] == 4
    world.fake.script(a, times=1, status=503, error_code=131016)

    messages, failed = sqs.deliver(OUTBOUND_SEND, sender.handler)
    assert len(messages) == 4
    group_a = [m["MessageId"] for m in messages
               if m["Attributes"]["MessageGroupId"].endswith(a)]
    assert len(group_a) == 3 and sorted(failed) == sorted(group_a)
    assert [s.recipient for s in world.fake.sent_snapshot() if s.accepted] == [b]
    assert sqs.deliver(OUTBOUND_SEND, sender.handler) == ([], [])  # the group waits

    def sent() -> bool:
        handed, again = sqs.deliver(OUTBOUND_SEND, sender.handler)
        assert [m["MessageId"] for m in handed] in ([], group_a)  # the head first
        return bool(handed) and not again

    wait_for(sent, 15, interval=0.2, message="group a sent after its backoff")
    bodies = [s.body["text"]["body"] for s in world.fake.sent_snapshot()
              if s.accepted and s.recipient == a]
    assert bodies == [f"msg {i} to {a}" for i in range(3)]
    deadline = time.monotonic() + 15
    while sqs.counts(OUTBOUND_RESULTS)["visible"] and time.monotonic() < deadline:
        assert sqs.deliver(OUTBOUND_RESULTS, saver.handler)[1] == []
    assert {world.outbox("acme")[i]["status"] for i in ids} == {OutboundStatus.ACCEPTED}
